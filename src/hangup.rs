//! SIGHUP, where there is one: what makes a replica or worker reload its certificates on Unix.
//! On other systems it never comes (the files are still reloaded when they change).

/// A listener for SIGHUP.
pub struct Hangup {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangup {
    /// Starts listening; SIGHUP then no longer ends the process.
    pub fn listen() -> std::io::Result<Hangup> {
        #[cfg(unix)]
        return Ok(Hangup {
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        });
        #[cfg(not(unix))]
        Ok(Hangup {})
    }

    /// The next SIGHUP; never, where there is none.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if self.signal.recv().await.is_some() {
            return;
        }
        std::future::pending::<()>().await
    }
}
