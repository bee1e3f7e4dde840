//! Skipping a test whose real part (a system package, a kernel feature) is missing: the reason is
//! printed and recorded, so `scripts/test` counts the test as skipped, never as passed.

/// Records that `test` was skipped because of `reason`, and prints it.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    if let Ok(dir) = std::env::var("HANDOVER_SKIP_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(std::path::Path::new(&dir).join(format!("{test}.skip")), reason);
    }
}
