//! Test certificates made at test time with the `openssl` command (never committed), and the
//! real clients the TLS and HTTP/2 tests use (curl, h2load), each found or reported missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::harness::{self, Lack};

/// Whether openssl is here and works (`openssl version`).
pub fn openssl_available() -> Result<(), Lack> {
    harness::program("openssl", "version", "openssl")
}

/// Whether curl is here and works.
pub fn curl_available() -> Result<(), Lack> {
    harness::program("curl", "--version", "curl")
}

/// Whether h2load is here and works.
pub fn h2load_available() -> Result<(), Lack> {
    harness::program("h2load", "--version", "nghttp2-client")
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

/// A CA and a leaf certificate for `name` signed by it (P-256; the leaf is not a CA, as webpki
/// wants): `(ca_cert, leaf_cert, leaf_key)` in `dir`, files named after `file`.
pub fn ca_and_leaf(dir: &Path, name: &str, file: &str) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let path = |suffix: &str| dir.join(format!("{file}{suffix}"));
    let (ca, ca_key, leaf, key, csr, ext) = (
        path("-ca.pem"),
        path("-ca.key"),
        path(".pem"),
        path(".key"),
        path(".csr"),
        path(".ext"),
    );
    std::fs::write(
        &ext,
        format!("subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"),
    )
    .map_err(|e| e.to_string())?;
    let run = |args: Vec<String>| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let p = |p: &PathBuf| p.display().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"].map(String::from);
    let mut args: Vec<String> = vec!["req".into(), "-x509".into()];
    args.extend(ec.clone());
    args.extend(
        [
            "-days",
            "2",
            "-subj",
            &format!("/CN={file} test CA"),
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&ca),
        ]
        .map(String::from),
    );
    run(args)?;
    let mut args: Vec<String> = vec!["req".into()];
    args.extend(ec);
    args.extend(
        [
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
        ]
        .map(String::from),
    );
    run(args)?;
    run([
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&leaf),
    ]
    .map(String::from)
    .to_vec())?;
    Ok((ca, leaf, key))
}
