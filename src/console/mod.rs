//! The web console: Scale Out Manager in the browser, served by every replica that has a
//! `console_listen` address. So far: the sign-in tokens ([`token`]) that `scaleout console
//! token` mints from an operator or admin certificate and a replica checks against its CA.

pub mod token;
