//! `libvirt_hook_xml`: the libvirt hook's domain → VM lookup (`handover_sources::libvirt::vm_of`)
//! and its reading of libvirt's arguments (`HookCall::from_args`, `action`).
//!
//! The first line of the input is the hook's arguments, separated by spaces (the first is the
//! domain name); the rest is the domain XML libvirt writes on the hook's stdin. No panic; the VM
//! found is a valid VM id; without XML it is the domain name; an error names the domain it is
//! about, and only XML that is there can be invalid.

#![no_main]

use handover_core::model::VmId;
use handover_sources::libvirt::{HookCall, HookError, vm_of};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The hook reads its stdin as UTF-8 text, and its arguments are strings.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (arguments, xml) = text.split_once('\n').unwrap_or((text, ""));
    let args: Vec<String> = arguments.split(' ').map(str::to_string).collect();
    let call = match HookCall::from_args(&args) {
        Ok(call) => call,
        Err(HookError::Arguments) => {
            assert!(args.len() < 2);
            HookCall {
                domain: args[0].clone(),
                operation: "-".into(),
                sub_operation: "-".into(),
                extra: "-".into(),
            }
        }
        Err(other) => panic!("arguments refused with {other:?}"),
    };
    assert_eq!(call.domain, args[0]);
    let _ = call.action();

    match vm_of(&call.domain, xml) {
        Ok(vm) => {
            assert!(
                VmId::new(vm.as_str()).is_ok(),
                "an invalid VM id {vm:?} was returned"
            );
            if xml.trim().is_empty() {
                assert_eq!(vm.as_str(), call.domain, "without XML the VM is the domain");
            }
        }
        Err(HookError::Xml(reason)) => {
            assert!(!xml.trim().is_empty(), "absent XML reported as invalid");
            assert!(!reason.is_empty());
        }
        Err(HookError::Vm { domain, reason }) => {
            assert_eq!(domain, call.domain, "the error names another domain");
            assert!(!reason.is_empty());
        }
        Err(HookError::Arguments) => panic!("vm_of reported an argument error"),
    }
});
