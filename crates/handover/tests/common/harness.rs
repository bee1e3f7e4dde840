//! The test harness of the test binaries whose tests need real parts (HAProxy, nginx, QEMU, etcd,
//! libvirt, a Python package, a browser): each test names what it needs, and what is missing is
//! decided when the binary lists its tests, so that every runner reports such a test as *ignored*
//! (a skip), never as passed — nextest lists a binary's tests before it runs any, and runs none it
//! was told is ignored; `cargo test` prints `ignored` and counts it.
//!
//! - A part that is absent ([`Lack::Missing`]) skips the test with the reason, printed and written
//!   to `$HANDOVER_SKIP_DIR/NAME.skip` for the summary of `scripts/test`.
//! - A part that is present but broken ([`Lack::Broken`], e.g. `haproxy -v` fails) fails the test.
//! - With `HANDOVER_REQUIRE_ALL=1` (set by `.ci/run`) a missing part fails the test too, with its
//!   reason: in CI nothing may be skipped.
//!
//! A binary that uses it is declared with `harness = false` and has
//! `fn main() { harness::main(vec![...]) }`; its tests are plain functions (`async` ones run on a
//! two-thread Tokio runtime, as `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`).

use std::collections::HashMap;
use std::future::Future;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// Why a test cannot run here.
#[derive(Clone, Debug)]
pub enum Lack {
    /// The part is not installed or not permitted (not root): the test is skipped, outside CI.
    Missing(String),
    /// The part is installed but does not work: the test fails.
    Broken(String),
}

impl From<String> for Lack {
    fn from(reason: String) -> Self {
        Lack::Missing(reason)
    }
}

/// A check for one real part; `Err` says what is missing or broken.
pub type Probe = fn() -> Result<(), Lack>;

/// One test: its name, what it needs and its body.
pub struct Test {
    name: &'static str,
    needs: Vec<Probe>,
    body: Box<dyn FnOnce() + Send>,
}

/// A test whose body is a plain function.
pub fn test(name: &'static str, body: fn()) -> Test {
    Test {
        name,
        needs: Vec::new(),
        body: Box::new(body),
    }
}

/// A test whose body is an async function, run on a two-thread Tokio runtime.
pub fn test_async<F>(name: &'static str, body: fn() -> F) -> Test
where
    F: Future<Output = ()> + 'static,
{
    Test {
        name,
        needs: Vec::new(),
        body: Box::new(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a Tokio runtime")
                .block_on(body())
        }),
    }
}

impl Test {
    /// The test runs only where `probe` finds its part.
    pub fn needs(mut self, probe: Probe) -> Self {
        self.needs.push(probe);
        self
    }
}

/// Whether a missing part fails the test instead of skipping it (`HANDOVER_REQUIRE_ALL=1`).
pub fn require_all() -> bool {
    std::env::var("HANDOVER_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Records that `test` is skipped because of `reason`: printed (unless only listing) and written
/// to `$HANDOVER_SKIP_DIR` when that is set.
fn record_skip(test: &str, reason: &str, listing: bool) {
    if !listing {
        eprintln!("SKIPPED {test}: {reason}");
    }
    if let Ok(dir) = std::env::var("HANDOVER_SKIP_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(std::path::Path::new(&dir).join(format!("{test}.skip")), reason);
    }
}

/// Whether the name filters of the command line (`FILTER`, `--exact`, `--skip`) select `name`;
/// whether the test is ignored is not their business (nextest lists with `--ignored`).
fn selected(args: &Arguments, name: &str) -> bool {
    let matches = |filter: &str| {
        if args.exact {
            name == filter
        } else {
            name.contains(filter)
        }
    };
    args.filter.as_deref().is_none_or(matches) && !args.skip.iter().any(|s| matches(s))
}

/// Lists and runs `tests` as the command line asks (the arguments of the built-in harness, which
/// nextest and `cargo test` pass), then exits with the outcome.
pub fn main(tests: Vec<Test>) -> ! {
    let args = Arguments::from_args();
    let require_all = require_all();
    let mut probed: HashMap<usize, Result<(), Lack>> = HashMap::new();
    let trials = tests
        .into_iter()
        .map(|test| {
            let name = test.name;
            // Only the tests the name filters select are probed: nextest runs one test per process.
            if !selected(&args, name) {
                return Trial::test(name, || Ok(()));
            }
            let lack = test
                .needs
                .iter()
                .find_map(|probe| probed.entry(*probe as usize).or_insert_with(probe).clone().err());
            match lack {
                None => {
                    let body = test.body;
                    Trial::test(name, move || {
                        body();
                        Ok(())
                    })
                }
                Some(Lack::Broken(why)) => Trial::test(name, move || {
                    Err(Failed::from(format!("a real part is broken: {why}")))
                }),
                Some(Lack::Missing(why)) if require_all => Trial::test(name, move || {
                    Err(Failed::from(format!(
                        "a real part is missing and HANDOVER_REQUIRE_ALL=1 forbids skipping: {why}"
                    )))
                }),
                Some(Lack::Missing(why)) => {
                    record_skip(name, &why, args.list);
                    Trial::ignorable_test(name, move || Ok(Completion::ignored_with(why)))
                        .with_ignored_flag(true)
                }
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

/// Whether `program` is installed and works: absent is [`Lack::Missing`] (with the Debian
/// `package` to install), present but failing `program arg` (`haproxy -v`) is [`Lack::Broken`].
pub fn program(program: &str, arg: &str, package: &str) -> Result<(), Lack> {
    match std::process::Command::new(program).arg(arg).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(Lack::Broken(format!(
            "`{program} {arg}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Lack::Missing(format!(
            "{program} is not installed (Debian package {package}; scripts/test installs it as root)"
        ))),
        Err(e) => Err(Lack::Broken(format!("{program} cannot run: {e}"))),
    }
}

/// Whether this process runs as root (network namespaces, taps, libvirtd need it).
pub fn root() -> Result<(), Lack> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if root {
        Ok(())
    } else {
        Err(Lack::Missing("needs root (namespaces, taps, daemons)".into()))
    }
}

/// Whether `python3` can import `module` (installed from PyPI as `package`).
pub fn python_module(module: &str, package: &str) -> Result<(), Lack> {
    program("python3", "--version", "python3")?;
    let out = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map_err(|e| Lack::Broken(format!("python3 cannot run: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Lack::Missing(format!(
            "the Python package {package} is not installed (pip install {package}; scripts/test does)"
        )))
    }
}
