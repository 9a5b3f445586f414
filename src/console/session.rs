//! The console's browser session: the sign-in token itself, kept in a cookie the page's scripts
//! cannot read (`HttpOnly`), sent only over HTTPS (`Secure`) and only with requests from the
//! console's own pages (`SameSite=Strict`). Every form carries a CSRF token derived from the
//! session token, which another site can neither read nor guess; a form posted without it is
//! refused even if a browser sent the cookie.

use ring::digest;

/// The cookie's name.
pub const COOKIE: &str = "scaleout_session";

/// The `Set-Cookie` value that keeps `token` for `max_age_secs` (until the token expires).
pub fn session_cookie(token: &str, max_age_secs: u64) -> String {
    format!("{COOKIE}={token}; Max-Age={max_age_secs}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that signs the browser out.
pub fn cleared_cookie() -> String {
    format!("{COOKIE}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Strict")
}

/// The session token in a request's `Cookie` headers, if there is one.
pub fn token_in<'a>(cookie_headers: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    cookie_headers
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && !value.is_empty())
        .map(|(_, value)| value)
}

/// The CSRF token of the session whose token is `session`.
pub fn csrf_for(session: &str) -> String {
    let digest = digest::digest(
        &digest::SHA256,
        format!("scaleout-csrf:{session}").as_bytes(),
    );
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `given` is the session's CSRF token.
pub fn csrf_matches(session: &str, given: &str) -> bool {
    let expected = csrf_for(session);
    // Constant time: the comparison must not tell an attacker how much of a guess was right.
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others_and_is_locked_down() {
        let set = session_cookie("sot1.a.b.c", 3600);
        for attribute in [
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=3600",
            "Path=/",
        ] {
            assert!(set.contains(attribute), "{set}");
        }
        let headers = ["theme=dark; scaleout_session=sot1.a.b.c", "other=1"];
        assert_eq!(token_in(headers.into_iter()), Some("sot1.a.b.c"));
        assert_eq!(token_in(["scaleout_session="].into_iter()), None);
        assert_eq!(token_in(std::iter::empty()), None);
        assert!(cleared_cookie().contains("Max-Age=0"));
    }

    #[test]
    fn a_csrf_token_belongs_to_one_session() {
        let token = csrf_for("session-a");
        assert_eq!(token.len(), 64);
        assert!(csrf_matches("session-a", &token));
        assert!(!csrf_matches("session-b", &token));
        assert!(!csrf_matches("session-a", ""));
        assert!(!csrf_matches("session-a", &token[..63]));
    }
}
