//! The rules of SPEC §1 that need no database: names, unique names, endpoint URLs, XML names.
//!
//! Pure Rust. Each check returns the reason a value is refused, phrased to follow the value in
//! an error message: `unique name "a__b" is invalid: it contains two consecutive underscores`.

/// Longest name and unique name, in characters (Salesforce's limit).
pub const MAX_NAME_CHARS: usize = 80;

/// A message's display name: non-empty, at most 80 characters.
pub fn name(name: &str) -> Result<(), &'static str> {
    if name.trim().is_empty() {
        Err("it is empty")
    } else if name.chars().count() > MAX_NAME_CHARS {
        Err("it is longer than 80 characters")
    } else {
        Ok(())
    }
}

/// A unique name: ASCII letters, digits and underscores; begins with a letter; does not end
/// with an underscore; no two consecutive underscores; at most 80 characters.
pub fn unique_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("it is empty")
    } else if name.chars().count() > MAX_NAME_CHARS {
        Err("it is longer than 80 characters")
    } else if name.contains(' ') {
        Err("it contains a space")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Err("it may contain only ASCII letters, digits and underscores")
    } else if !name.as_bytes()[0].is_ascii_alphabetic() {
        Err("it must begin with a letter")
    } else if name.ends_with('_') {
        Err("it must not end with an underscore")
    } else if name.contains("__") {
        Err("it contains two consecutive underscores")
    } else {
        Ok(())
    }
}

/// An endpoint URL: absolute `http` or `https`, with a host, parseable as an HTTP URI.
pub fn endpoint_url(url: &str) -> Result<(), &'static str> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains white space or control characters");
    }
    let Some((scheme, _)) = url.split_once("://") else {
        return Err("it must be an absolute http or https URL");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("its scheme must be http or https");
    }
    let uri: ureq::http::Uri = url.parse().map_err(|_| "it is not a valid URL")?;
    if let Some(port) = uri.authority().and_then(|a| port_text(a.as_str())) {
        if !matches!(port.parse::<u16>(), Ok(1..)) {
            return Err("its port must be between 1 and 65535");
        }
    }
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err("it has no host"),
    }
}

/// The port part of an authority (`user:pw@host:port`, `[::1]:port`), if any.
fn port_text(authority: &str) -> Option<&str> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let after_host = match host_port.rsplit_once(']') {
        Some((_, rest)) => rest,
        None => host_port,
    };
    after_host.rsplit_once(':').map(|(_, port)| port)
}

/// An endpoint's identity: scheme, host and port, lowercased, without credentials or path.
pub fn endpoint_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = host_port.to_ascii_lowercase();
    let has_port = match host_port.rsplit_once(':') {
        // An IPv6 literal's colons are inside its brackets.
        Some((host, port)) => !port.contains(']') && !host.is_empty(),
        None => false,
    };
    if has_port {
        return format!("{scheme}://{host_port}");
    }
    let port = if scheme == "https" { 443 } else { 80 };
    format!("{scheme}://{host_port}:{port}")
}

/// Whether the host of `url` matches one of `patterns`: a comma-separated list of host names
/// (`erp.example.com`), wildcards for subdomains (`*.example.com`) or `*` for any host; an
/// empty list allows every host. Matching ignores case; IPv6 hosts may be bracketed or not.
pub fn host_allowed(patterns: &str, url: &str) -> bool {
    if patterns.trim().is_empty() {
        return true;
    }
    let Some(host) = url
        .parse::<ureq::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
    else {
        return false;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    patterns
        .split(',')
        .map(|p| p.trim().to_ascii_lowercase())
        .any(|pattern| {
            let pattern = pattern.trim_start_matches('[').trim_end_matches(']');
            match pattern.strip_prefix("*.") {
                _ if pattern == "*" => true,
                Some(suffix) => host.len() > suffix.len() && host.ends_with(&format!(".{suffix}")),
                None => !pattern.is_empty() && host == pattern,
            }
        })
}

/// A name usable as an XML element or type name without a prefix (an XML 1.0 NCName, limited
/// to what PostgreSQL identifiers contain in practice).
pub fn xml_name(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err("it is empty");
    };
    if name.len() >= 3 && name[..3].eq_ignore_ascii_case("xml") {
        return Err("names beginning with \"xml\" are reserved in XML");
    }
    if !is_name_start(first) {
        return Err("it must begin with a letter or an underscore to be an XML name");
    }
    if chars.all(|c| {
        is_name_start(c) || c == '-' || c == '.' || c.is_ascii_digit() || is_name_extender(c)
    }) {
        Ok(())
    } else {
        Err("it may contain only letters, digits, '_', '-' and '.' to be an XML name")
    }
}

fn is_name_start(c: char) -> bool {
    c == '_'
        || c.is_ascii_alphabetic()
        || matches!(c,
            '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}'
            | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}'
            | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}'
            | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

fn is_name_extender(c: char) -> bool {
    matches!(c, '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_scheme_host_and_port() {
        assert_eq!(
            endpoint_of("http://u:p@Host.Example/x?y"),
            "http://host.example:80"
        );
        assert_eq!(endpoint_of("HTTPS://h:8443/soap"), "https://h:8443");
        assert_eq!(endpoint_of("https://h"), "https://h:443");
        assert_eq!(endpoint_of("http://[::1]/x"), "http://[::1]:80");
        assert_eq!(endpoint_of("http://[::1]:81/x"), "http://[::1]:81");
        assert_eq!(endpoint_of("http://svc:p@ss@h:9/x"), "http://h:9");
    }

    #[test]
    fn names_are_non_empty_and_short() {
        assert_eq!(name("Expense to ERP"), Ok(()));
        assert_eq!(name(""), Err("it is empty"));
        assert_eq!(name("   "), Err("it is empty"));
        assert_eq!(name(&"é".repeat(80)), Ok(()));
        assert_eq!(
            name(&"a".repeat(81)),
            Err("it is longer than 80 characters")
        );
    }

    #[test]
    fn unique_names_follow_every_salesforce_rule() {
        for good in ["Expense_to_ERP", "a", "A1_b2", &"a".repeat(80)] {
            assert_eq!(unique_name(good), Ok(()), "{good}");
        }
        let cases = [
            ("", "it is empty"),
            ("has space", "it contains a space"),
            (
                "dash-ed",
                "it may contain only ASCII letters, digits and underscores",
            ),
            (
                "café",
                "it may contain only ASCII letters, digits and underscores",
            ),
            ("1abc", "it must begin with a letter"),
            ("_abc", "it must begin with a letter"),
            ("abc_", "it must not end with an underscore"),
            ("a__b", "it contains two consecutive underscores"),
        ];
        for (bad, reason) in cases {
            assert_eq!(unique_name(bad), Err(reason), "{bad}");
        }
        assert_eq!(
            unique_name(&"a".repeat(81)),
            Err("it is longer than 80 characters")
        );
    }

    #[test]
    fn endpoints_are_absolute_http_urls_with_a_host() {
        for good in [
            "http://127.0.0.1:8080/notify",
            "https://erp.example.com/soap?x=1",
            "HTTPS://erp.example.com",
            "https://user:secret@erp.example.com/",
            "http://[::1]:9000/",
        ] {
            assert_eq!(endpoint_url(good), Ok(()), "{good}");
        }
        let cases = [
            ("ftp://example.com/", "its scheme must be http or https"),
            ("/relative/path", "it must be an absolute http or https URL"),
            (
                "example.com/path",
                "it must be an absolute http or https URL",
            ),
            (
                "http://exa mple.com/",
                "it contains white space or control characters",
            ),
            ("http://", "it is not a valid URL"),
            ("not a url", "it contains white space or control characters"),
            ("http://host:99999/", "its port must be between 1 and 65535"),
            ("http://host:0/", "its port must be between 1 and 65535"),
        ];
        for (bad, reason) in cases {
            assert_eq!(endpoint_url(bad), Err(reason), "{bad}");
        }
    }

    #[test]
    fn hosts_match_allowed_patterns() {
        let patterns = "erp.example.com, *.corp.example ,127.0.0.1,[::1]";
        for url in [
            "https://erp.example.com/soap",
            "https://ERP.Example.com:8443/",
            "http://a.corp.example/",
            "http://a.b.corp.example/",
            "http://127.0.0.1:9/",
            "http://[::1]:9/",
            "https://user:pw@erp.example.com/",
        ] {
            assert!(host_allowed(patterns, url), "{url}");
        }
        for url in [
            "https://evil.example.com/",
            "http://corp.example/",
            "http://xcorp.example/",
            "http://erp.example.com.evil.net/",
            "http://127.0.0.2/",
        ] {
            assert!(!host_allowed(patterns, url), "{url}");
        }
        assert!(host_allowed("", "http://anything/"));
        assert!(host_allowed("*", "http://anything/"));
    }

    #[test]
    fn xml_names() {
        for good in ["amount", "_x", "Ünïcode", "a-b.c9", "東京"] {
            assert_eq!(xml_name(good), Ok(()), "{good}");
        }
        assert!(xml_name("").is_err());
        assert!(xml_name("9lives").is_err());
        assert!(xml_name("has space").is_err());
        assert!(xml_name("a:b").is_err());
        assert!(xml_name("XmlThing").is_err());
        assert!(xml_name("-x").is_err());
    }
}
