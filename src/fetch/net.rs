//! What the downloads share: the HTTP agent, one-phrase descriptions of network failures,
//! progress bars and file digests.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use md5::Md5;
use sha2::{Digest, Sha256};

/// How long to wait for a connection, and for the next bytes of a response, before giving
/// up (a stalled download is then resumed).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A blocking HTTP client: follows redirects, honours the usual proxy variables.
pub(crate) fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout_read(READ_TIMEOUT)
        .try_proxy_from_env(true)
        .user_agent(concat!("saeclip/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Why a request failed, in a few words: "connection refused", "HTTP 404 Not Found", ...
pub(crate) fn describe(err: &ureq::Error) -> String {
    match err {
        ureq::Error::Status(code, response) => {
            let hint = match code {
                401 | 403 => " (private or gated: set HF_TOKEN or log in if this is a model)",
                _ => "",
            };
            format!("HTTP {code} {}{hint}", response.status_text())
        }
        ureq::Error::Transport(transport) => {
            let io = std::error::Error::source(transport)
                .and_then(|source| source.downcast_ref::<std::io::Error>());
            let detail = || {
                io.map(ToString::to_string)
                    .or_else(|| transport.message().map(str::to_string))
                    .unwrap_or_else(|| transport.kind().to_string())
            };
            match (transport.kind(), io.map(std::io::Error::kind)) {
                (_, Some(std::io::ErrorKind::ConnectionRefused)) => "connection refused".into(),
                (_, Some(std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)) => {
                    "timed out".into()
                }
                (ureq::ErrorKind::Dns, _) => format!("host name not found: {}; offline?", detail()),
                (ureq::ErrorKind::ConnectionFailed, _) => format!("cannot connect: {}", detail()),
                (kind, _) => format!("{kind}: {}", detail()),
            }
        }
    }
}

/// Whether trying again may help: the connection dropped or stalled, or the server had a
/// passing problem; not "refused", "not found" or "forbidden".
pub(crate) fn is_transient(err: &ureq::Error) -> bool {
    match err {
        ureq::Error::Status(code, _) => *code == 429 || *code >= 500,
        ureq::Error::Transport(transport) => {
            let refused = std::error::Error::source(transport)
                .and_then(|source| source.downcast_ref::<std::io::Error>())
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
            !refused
                && matches!(
                    transport.kind(),
                    ureq::ErrorKind::Io | ureq::ErrorKind::ConnectionFailed
                )
        }
    }
}

/// A byte-counting progress bar on stderr, drawn only when `show` is set and stderr is a
/// terminal (so piped output stays clean).
pub(crate) fn progress_bar(show: bool, len: Option<u64>, message: String) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    let template = if len.is_some() {
        "{msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
    } else {
        "{msg} {bytes} {binary_bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

/// MD5 and SHA-256 of a file, lowercase hex, and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Digests {
    pub md5: String,
    pub sha256: String,
    pub bytes: u64,
}

/// Hash a file in one pass.
pub(crate) fn digest_file(path: &Path) -> Result<Digests> {
    let mut md5 = Md5::new();
    let mut sha256 = Sha256::new();
    let bytes = read_chunks(path, |chunk| {
        md5.update(chunk);
        sha256.update(chunk);
    })?;
    Ok(Digests {
        md5: format!("{:x}", md5.finalize()),
        sha256: format!("{:x}", sha256.finalize()),
        bytes,
    })
}

/// SHA-256 of a file, lowercase hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut sha256 = Sha256::new();
    read_chunks(path, |chunk| sha256.update(chunk))?;
    Ok(format!("{:x}", sha256.finalize()))
}

fn read_chunks(path: &Path, mut eat: impl FnMut(&[u8])) -> Result<u64> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(total);
        }
        eat(&buffer[..n]);
        total += n as u64;
    }
}

/// Whether `text` is `len` lowercase-or-uppercase hex digits.
pub(crate) fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Seconds since the Unix epoch, for the markers.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_of_known_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let d = digest_file(&path).unwrap();
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.bytes, 3);
        assert_eq!(sha256_file(&path).unwrap(), d.sha256);
    }

    #[test]
    fn hex_check() {
        assert!(is_hex("c32a1d4ab5d03f1284b67883e8d87530", 32));
        assert!(!is_hex("c32a1d4ab5d03f1284b67883e8d8753", 32));
        assert!(!is_hex("g32a1d4ab5d03f1284b67883e8d87530", 32));
    }
}
