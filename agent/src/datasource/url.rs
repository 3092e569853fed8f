//! `berth.config_url=URL` on the kernel command line: user-data from an http:// or
//! https:// URL the operator names (https checked against the image's CA bundle), for
//! bare metal and clouds without a datasource of their own.

use crate::http::Http;

use super::Fetched;

pub const PARAM: &str = "berth.config_url=";

/// The URL the command line names, if any.
pub fn from_cmdline(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(PARAM))
        .map(str::to_string)
}

/// Whether Berth can fetch `url` at all (said at once rather than retried).
pub fn check(url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!(
            "{PARAM}{url}: only http:// and https:// URLs are fetched"
        ))
    }
}

pub fn fetch(http: &Http, url: &str) -> Result<Fetched, String> {
    let a = http.request("GET", url, &[])?;
    match a.status {
        200 => Ok(Fetched {
            source: format!("{PARAM}{url}"),
            user_data: Some(a.body),
            ..Fetched::default()
        }),
        s => Err(format!("GET {url}: status {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_from_the_command_line() {
        assert_eq!(
            from_cmdline("console=ttyS0 berth.config_url=http://10.0.0.1/ud quiet").as_deref(),
            Some("http://10.0.0.1/ud")
        );
        assert_eq!(from_cmdline("console=ttyS0"), None);
        assert!(check("ftp://x/y")
            .unwrap_err()
            .contains("only http:// and https://"));
        assert!(check("https://x/y").is_ok());
    }
}
