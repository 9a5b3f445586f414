//! The web console: Scale Out Manager in the browser, served over HTTPS by every replica that
//! has a `console_listen` address (the server: `master::console`). People sign in with a token
//! ([`token`]) that `scaleout console token` mints from an operator or admin certificate and a
//! replica checks against its CA; the browser keeps it in a locked-down cookie, and forms carry
//! a CSRF token derived from it ([`session`]). Pages are rendered on the server ([`pages`]).

pub mod history;
pub mod pages;
pub mod session;
pub mod token;
