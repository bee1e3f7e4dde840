//! Test certificates made at test time with the `openssl` command (never committed), and the
//! real clients the TLS and HTTP/2 tests use (curl, h2load), each found or reported missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Whether a program is on PATH; `Err` says what to install.
pub fn tool(program: &str, package: &str) -> Result<(), String> {
    match Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(format!("{program} is not installed (Debian package {package})")),
    }
}

/// A self-signed certificate for `name` (P-256), valid two days: `(cert, key)` in `dir`, files
/// named after `file`.
pub fn self_signed(dir: &Path, name: &str, file: &str) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join(format!("{file}.pem"));
    let key = dir.join(format!("{file}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=DNS:{name},IP:127.0.0.1"),
        ])
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((cert, key))
}

/// Runs curl with these arguments (silent, with a 10 s limit).
pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl")
}

/// `curl -w '%{http_version} %{http_code}'` and the body: `(version, status, body)`.
pub fn curl_get(args: &[&str]) -> (String, u16, String) {
    let mut all = vec!["-w", "\n%{http_version} %{http_code}"];
    all.extend_from_slice(args);
    let out = curl(&all);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut parts = tail.split(' ');
    let version = parts.next().unwrap_or("").to_string();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (version, status, body.to_string())
}
