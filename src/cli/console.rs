//! `scaleout console …`: the web console's sign-in tokens.

use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};

use super::{CliError, ClientTlsArgs};
use crate::console::token;

#[derive(Subcommand)]
pub enum ConsoleCommand {
    /// Mint a sign-in token for the web console from an operator or admin certificate (signed
    /// with its key; any replica of the cluster accepts it until it expires). Printed on
    /// standard output, once: paste it into the console's sign-in page.
    Token(TokenArgs),
}

#[derive(Args)]
pub struct TokenArgs {
    /// How long the token is valid.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=168))]
    hours: u64,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

impl ConsoleCommand {
    pub fn run(self) -> Result<(), CliError> {
        let ConsoleCommand::Token(args) = self;
        if args.tls.insecure {
            return Err(CliError::usage(anyhow!(
                "a console token is signed with a certificate's key: pass --tls-dir DIR \
                 --identity operator|admin (or --ca, --cert and --key), not --insecure"
            )));
        }
        let paths = args.tls.paths()?;
        let identity = crate::tls::load_identity(&paths.ca, &paths.cert, &paths.key)
            .map_err(CliError::usage)?;
        let valid_for = Duration::from_secs(args.hours * 3600);
        let now_ms = crate::wall_time::now_ms();
        let minted = token::issue(&identity, valid_for, now_ms).map_err(CliError::usage)?;
        println!("{minted}");
        eprintln!(
            "a sign-in token for {} until {}; anyone who has it can act as this role until \
             then: do not put it in a URL, a ticket or a chat",
            identity.role(),
            crate::wall_time::rfc3339_ms(now_ms + valid_for.as_millis() as u64)
        );
        Ok(())
    }
}
