//! `config_reader`: `handover_core::config::parse` on arbitrary text.
//!
//! No panic; every error names a field or a line (and only lines the text has); a configuration
//! that is accepted can be started from (pools, balancers and coordinator are built from it as
//! `handover run` builds them, without binding sockets). See `handover_fuzz::config::check`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `handover check` and `run` read the file as UTF-8 and stop on anything else.
    if let Ok(text) = std::str::from_utf8(data) {
        handover_fuzz::config::check(text);
    }
});
