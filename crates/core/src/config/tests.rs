use super::*;
use std::path::PathBuf;

const EXAMPLE: &str = r#"
[control]
bind = "127.0.0.1:9090"

[[listeners]]
name = "web"
kind = "http"
bind = "127.0.0.1:8080"
pool = "web"

[pools.web]
algorithm = "round_robin"
drain = { target = 0.0, shape = "step", keep = "connections" }
ramp = { window = "10s", aggression = 1.0, min_percent = 10 }
deadline = "10m"

[[pools.web.backends]]
address = "127.0.0.1:9001"
vm = "vm-a"
weight = 1

[[pools.web.backends]]
address = "127.0.0.1:9002"
vm = "vm-b"
"#;

fn errors_of(src: &str) -> Vec<ConfigError> {
    parse(src).expect_err("config should be rejected").0
}

#[test]
fn the_documented_example_parses() {
    let config = parse(EXAMPLE).unwrap();
    assert_eq!(config.control.bind, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(config.listeners.len(), 1);
    let pool = config.pool("web").unwrap();
    assert_eq!(pool.backends.len(), 2);
    assert_eq!(pool.backends[1].weight, 1);
    assert_eq!(pool.ramp.window, Duration::from_secs(10));
    assert_eq!(pool.deadline, Duration::from_secs(600));
    assert_eq!(pool.backends[0].vm.as_str(), "vm-a");
}

#[test]
fn an_empty_file_is_a_valid_migration_module_only_config() {
    let config = parse("").unwrap();
    assert!(config.listeners.is_empty());
    assert_eq!(config.control.bind.to_string(), DEFAULT_CONTROL_BIND);
}

#[test]
fn a_bad_address_names_the_field_and_the_line() {
    let src = EXAMPLE.replace("127.0.0.1:9002", "10.0.0.1");
    let errors = errors_of(&src);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "pools.web.backends[1].address");
    assert_eq!(errors[0].line, Some(23));
    assert!(
        errors[0]
            .to_string()
            .contains("invalid socket address \"10.0.0.1\""),
        "{}",
        errors[0]
    );
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let src = EXAMPLE
        .replace("kind = \"http\"", "kind = \"udp\"")
        .replace("algorithm = \"round_robin\"", "algorithm = \"random\"")
        .replace("min_percent = 10", "min_percent = 150")
        .replace("vm = \"vm-b\"", "vm = \"vm b\"\nport = 3");
    let errors = errors_of(&src);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "listeners[0].kind",
            "pools.web.algorithm",
            "pools.web.ramp.min_percent",
            "pools.web.backends[1].vm",
            "pools.web.backends[1].port",
        ],
        "{errors:#?}"
    );
    assert!(errors.iter().all(|e| e.line.is_some()));
    assert!(errors[4].message.contains("unknown field"));
}

#[test]
fn listener_pointing_at_a_missing_pool_is_rejected_with_its_line() {
    let src = EXAMPLE.replace("pool = \"web\"", "pool = \"api\"");
    let errors = errors_of(&src);
    assert_eq!(errors[0].path, "listeners[0].pool");
    assert_eq!(errors[0].line, Some(9));
    assert!(errors[0].message.contains("no pool named \"api\""));
}

#[test]
fn a_missing_pool_is_reported_with_the_other_errors() {
    let src = EXAMPLE
        .replace("pool = \"web\"", "pool = \"api\"")
        .replace("127.0.0.1:9002", "nowhere");
    let paths: Vec<String> = errors_of(&src).into_iter().map(|e| e.path).collect();
    assert_eq!(paths, vec!["listeners[0].pool", "pools.web.backends[1].address"]);
}

#[test]
fn errors_found_after_parsing_still_carry_lines_even_with_dotted_pool_names() {
    let src = EXAMPLE
        .replace("[pools.web]", "[pools.\"web.v2\"]")
        .replace("pools.web.backends", "pools.\"web.v2\".backends")
        .replace("pool = \"web\"", "pool = \"web.v2\"")
        .replace("127.0.0.1:9002", "127.0.0.1:9001");
    let errors = errors_of(&src);
    assert_eq!(errors[0].path, "pools.web.v2.backends[1].address");
    assert_eq!(errors[0].line, Some(23), "{errors:?}");
}

#[test]
fn syntax_errors_carry_a_line() {
    let errors = errors_of("[control]\nbind = \n");
    assert_eq!(errors[0].line, Some(2));
    assert!(errors[0].message.starts_with("TOML syntax"));
}

#[test]
fn drain_target_outside_zero_to_one_is_rejected() {
    let src = EXAMPLE.replace("target = 0.0", "target = 1.5");
    let errors = errors_of(&src);
    assert_eq!(errors[0].path, "pools.web.drain.target");
}

#[test]
fn linear_drain_needs_a_window() {
    let src = EXAMPLE.replace("shape = \"step\"", "shape = \"linear\"");
    let errors = errors_of(&src);
    assert_eq!(errors[0].path, "pools.web.drain.window");
}

#[test]
fn sessions_keep_needs_sticky() {
    let src = EXAMPLE.replace("keep = \"connections\"", "keep = \"sessions\"");
    let errors = errors_of(&src);
    assert_eq!(errors[0].path, "pools.web.drain.keep");
    let fixed = src.replace(
        "deadline = \"10m\"",
        "deadline = \"10m\"\nsticky = { cookie = \"hv\" }",
    );
    assert!(parse(&fixed).is_ok());
}

#[test]
fn duplicate_backend_addresses_are_rejected() {
    let src = EXAMPLE.replace("127.0.0.1:9002", "127.0.0.1:9001");
    let errors = errors_of(&src);
    assert!(errors[0].message.contains("duplicate backend address"));
}

#[test]
fn peers_need_http_urls() {
    let ok = parse("[[peers]]\nurl = \"http://127.0.0.1:9191/\"\n").unwrap();
    assert_eq!(ok.peers[0].url, "http://127.0.0.1:9191");
    assert_eq!(ok.peers[0].name, "127.0.0.1:9191");
    let errors = errors_of("[[peers]]\nurl = \"https://x:1\"\n");
    assert_eq!(errors[0].path, "peers[0].url");
    assert_eq!(errors[0].line, Some(2));
}

#[test]
fn zero_weight_and_zero_deadline_are_rejected() {
    let src = EXAMPLE
        .replace("weight = 1", "weight = 0")
        .replace("deadline = \"10m\"", "deadline = \"0s\"");
    let paths: Vec<String> = errors_of(&src).into_iter().map(|e| e.path).collect();
    assert!(
        paths.contains(&"pools.web.backends[0].weight".to_string()),
        "{paths:?}"
    );
    assert!(paths.contains(&"pools.web.deadline".to_string()), "{paths:?}");
}

#[test]
fn a_pool_without_backends_is_rejected() {
    let errors = errors_of("[pools.web]\nbackends = []\n");
    assert_eq!(errors[0].path, "pools.web.backends");
}

#[test]
fn qmp_monitors_are_validated() {
    // The VMs are served by a peer (this file cannot tell which: nothing is said).
    let peer = "\n[[peers]]\nurl = \"http://127.0.0.1:9091\"\n";
    let ok = parse(&format!("[[qmp]]\nsocket = \"/run/vm-a.qmp\"\nvm = \"vm-a\"\n\n[[qmp]]\nsocket = \"tcp:127.0.0.1:4444\"\nvm = \"vm-b\"\npoll_interval = \"250ms\"\n{peer}")).unwrap();
    assert_eq!(ok.qmp.len(), 2);
    assert_eq!(ok.qmp[0].poll_interval, Duration::from_secs(1));
    assert_eq!(ok.qmp[1].poll_interval, Duration::from_millis(250));
    let errors = errors_of(&format!(
        "[[qmp]]\nsocket = \"tcp:nowhere\"\nvm = \"vm-a\"\n[[qmp]]\nsocket = \"/x\"\nvm = \"vm-a\"\n{peer}"
    ));
    assert_eq!(errors[0].path, "qmp[0].socket");
    assert_eq!(errors[0].line, Some(2));
    let errors = errors_of(&format!(
        "[[qmp]]\nsocket = \"/a\"\nvm = \"vm-a\"\n[[qmp]]\nsocket = \"/b\"\nvm = \"vm-a\"\n{peer}"
    ));
    assert_eq!(errors[0].path, "qmp[1].vm");
    assert_eq!(errors[0].line, Some(6));
}

#[test]
fn libvirt_watchers_are_validated() {
    let ok = parse("[[libvirt]]\nuri = \"qemu:///system\"\n\n[[libvirt]]\nuri = \"qemu+tcp://hv2/system\"\nvirsh = \"/usr/local/bin/virsh\"\n").unwrap();
    assert_eq!(ok.libvirt.len(), 2);
    assert_eq!(ok.libvirt[0].virsh, std::path::PathBuf::from("virsh"));
    assert_eq!(ok.libvirt[1].uri, "qemu+tcp://hv2/system");
    let errors = errors_of(
        "[[libvirt]]\nuri = \"\"\n[[libvirt]]\nuri = \"qemu:///system x\"\n[[libvirt]]\nvirsh = \"v\"\n",
    );
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["libvirt[0].uri", "libvirt[1].uri", "libvirt[2].uri"],
        "{errors:?}"
    );
    assert_eq!(errors[1].line, Some(4));
    let errors = errors_of("[[libvirt]]\nuri = \"qemu:///system\"\n[[libvirt]]\nuri = \"qemu:///system\"\n");
    assert_eq!(errors[0].path, "libvirt[1].uri");
    assert!(errors[0].message.contains("already watched"), "{errors:?}");
}

#[test]
fn health_checks_parse_with_defaults_and_are_validated() {
    let src = EXAMPLE.replace(
        "deadline = \"10m\"",
        "deadline = \"10m\"\nhealth = { kind = \"http\", path = \"/healthz\", expect = \"2xx\", interval = \"500ms\" }\noutlier = { consecutive_failures = 3 }\nblackout_grace = \"1s\"",
    );
    let config = parse(&src).unwrap();
    let pool = config.pool("web").unwrap();
    let health = pool.health.as_ref().unwrap();
    assert_eq!(
        health.check,
        CheckKind::Http {
            path: "/healthz".into(),
            expect: StatusMatch::Class(2)
        }
    );
    assert_eq!(
        (health.interval, health.timeout, health.rise, health.fall),
        (Duration::from_millis(500), Duration::from_secs(1), 2, 3)
    );
    assert!(StatusMatch::Class(2).matches(204) && !StatusMatch::Class(2).matches(500));
    assert_eq!(
        pool.outlier,
        Some(OutlierConfig {
            consecutive_failures: 3,
            ejection: Duration::from_secs(10)
        })
    );
    assert_eq!(pool.blackout_grace, Duration::from_secs(1));

    let bad = EXAMPLE.replace(
        "deadline = \"10m\"",
        "deadline = \"10m\"\nhealth = { kind = \"tcp\", path = \"/x\", fall = 0 }",
    );
    let paths: Vec<String> = errors_of(&bad).into_iter().map(|e| e.path).collect();
    assert_eq!(paths, vec!["pools.web.health.path", "pools.web.health.fall"]);
    let bad = EXAMPLE.replace(
        "deadline = \"10m\"",
        "deadline = \"10m\"\nhealth = { kind = \"http\", expect = \"ok\" }",
    );
    assert_eq!(errors_of(&bad)[0].path, "pools.web.health.expect");
}

#[test]
fn the_state_file_is_optional() {
    assert_eq!(parse("").unwrap().state_file, None);
    let config = parse("[state]\nfile = \"/var/lib/handover/state.json\"\n").unwrap();
    assert_eq!(
        config.state_file,
        Some(PathBuf::from("/var/lib/handover/state.json"))
    );
    assert_eq!(errors_of("[state]\n")[0].path, "state.file");
}

#[test]
fn driven_balancers_parse_and_are_validated() {
    let config = parse(r#"
[[haproxy]]
name = "lb-1"
socket = "/run/haproxy/admin.sock"
vms = { "be/s1" = "vm-a", "127.0.0.1:9002" = "vm-b" }
ramp = { window = "5s" }

[[nginx]]
name = "ngx-1"
upstream = "web"
file = "/etc/nginx/handover/web.conf"
reload = ["nginx", "-s", "reload"]
extra = ["keepalive 16;"]
servers = [ { address = "127.0.0.1:9001", vm = "vm-a" }, { address = "127.0.0.1:9002", vm = "vm-b", weight = 2 } ]
"#).unwrap();
    let h = &config.haproxy[0];
    let be_s1 = ServerKey::Name {
        backend: "be".into(),
        server: "s1".into(),
    };
    assert!(h.vms.contains(&(be_s1, VmId::new("vm-a").unwrap())));
    let by_address = ServerKey::Address("127.0.0.1:9002".parse().unwrap());
    assert!(h.vms.contains(&(by_address, VmId::new("vm-b").unwrap())));
    assert_eq!(h.policy.ramp.window, Duration::from_secs(5));
    assert_eq!(h.policy.step, Duration::from_millis(500));
    let n = &config.nginx[0];
    assert_eq!(n.servers[1].weight, 2);
    assert_eq!(n.reload, vec!["nginx", "-s", "reload"]);

    let errors =
        errors_of("[[haproxy]]\nname = \"lb\"\nsocket = \"/s\"\nvms = { \"nonsense\" = \"vm-a\" }\n");
    assert_eq!(errors[0].path, "haproxy[0].vms.nonsense");
    assert_eq!(errors[0].line, Some(4));
    let errors = errors_of("[[haproxy]]\nname = \"lb\"\nsocket = \"/s\"\n");
    assert_eq!(errors[0].path, "haproxy[0].vms");
    let errors = errors_of(
        "[[peers]]\nname = \"lb\"\nurl = \"http://a:1\"\n[[haproxy]]\nname = \"lb\"\nsocket = \"/s\"\nserver_name_is_vm = true\n",
    );
    assert_eq!(errors[0].path, "haproxy[0].name");
    assert!(errors[0].message.contains("already used"));
}

#[test]
fn listener_timeouts_default_to_a_minute_and_must_be_positive() {
    let config = parse(EXAMPLE).unwrap();
    assert_eq!(config.listeners[0].response_timeout, Duration::from_secs(60));
    assert_eq!(config.listeners[0].client_timeout, Duration::from_secs(60));
    let set =
        parse(&EXAMPLE.replace("pool = \"web\"\n", "pool = \"web\"\nclient_timeout = \"5s\"\n")).unwrap();
    assert_eq!(set.listeners[0].client_timeout, Duration::from_secs(5));
    let errors = errors_of(&EXAMPLE.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nclient_timeout = \"0s\"\nresponse_timeout = \"soon\"\n",
    ));
    let named: Vec<(String, Option<usize>)> = errors.into_iter().map(|e| (e.path, e.line)).collect();
    assert!(
        named.contains(&("listeners[0].client_timeout".to_string(), Some(10))),
        "{named:?}"
    );
    assert!(
        named
            .iter()
            .any(|(path, _)| path == "listeners[0].response_timeout"),
        "{named:?}"
    );
}

#[test]
fn an_adaptive_drain_with_its_tunables_parses() {
    let src = EXAMPLE.replace(
        "drain = { target = 0.0, shape = \"step\", keep = \"connections\" }",
        "drain = { target = 0.5, adaptive = true, quiesce = true, quiesce_lead = \"3s\", quiesce_hold = \"0s\", \
         max_slowdown = 0.2, give_back_step = 0.5, give_back_interval = \"2s\", stall_passes = 3 }",
    );
    let config = parse(&src).unwrap();
    let adaptive = config.pool("web").unwrap().drain.adaptive;
    assert!(adaptive.enabled && adaptive.quiesce);
    assert_eq!(adaptive.quiesce_lead, Duration::from_secs(3));
    assert_eq!(adaptive.quiesce_hold, Duration::ZERO);
    assert_eq!(adaptive.max_slowdown, 0.2);
    assert_eq!(adaptive.give_back_step, 0.5);
    assert_eq!(adaptive.give_back_interval, Duration::from_secs(2));
    assert_eq!(adaptive.stall_passes, 3);
    // The defaults when only the switches are given.
    let src = EXAMPLE.replace("target = 0.0, shape", "target = 0.5, adaptive = true, shape");
    let adaptive = parse(&src).unwrap().pool("web").unwrap().drain.adaptive;
    assert_eq!(
        adaptive,
        crate::adaptive::AdaptiveDrain {
            enabled: true,
            ..Default::default()
        }
    );
}

#[test]
fn adaptive_tunables_without_their_switch_are_rejected_with_their_field() {
    let src = EXAMPLE.replace(
        "target = 0.0, shape",
        "target = 0.5, max_slowdown = 0.2, quiesce_lead = \"1s\", shape",
    );
    let errors = errors_of(&src);
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{messages:?}");
    assert_eq!(errors[0].path, "pools.web.drain.max_slowdown");
    assert!(
        messages[0].contains("only used with adaptive = true"),
        "{messages:?}"
    );
    assert_eq!(errors[1].path, "pools.web.drain.quiesce_lead");
    assert!(
        messages[1].contains("only used with quiesce = true"),
        "{messages:?}"
    );
    assert_eq!(errors[0].line, Some(13));
}

#[test]
fn bad_adaptive_values_name_their_fields() {
    let src = EXAMPLE.replace(
        "target = 0.0, shape",
        "target = 0.5, adaptive = \"yes\", quiesce = true, quiesce_lead = \"0s\", shape",
    );
    let paths: Vec<String> = errors_of(&src).into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        ["pools.web.drain.adaptive", "pools.web.drain.quiesce_lead"]
    );
    let src = EXAMPLE.replace(
        "target = 0.0, shape",
        "target = 0.5, adaptive = true, max_slowdown = -1, give_back_step = 0, stall_passes = 0, shape",
    );
    let errors = errors_of(&src);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "pools.web.drain.max_slowdown",
            "pools.web.drain.give_back_step",
            "pools.web.drain.stall_passes"
        ]
    );
    assert!(errors[1].to_string().contains("must be above zero"));
}

#[test]
fn a_vm_whose_pools_adapt_differently_is_rejected() {
    let src = format!(
        "{EXAMPLE}\n[pools.api]\ndrain = {{ target = 0.5, adaptive = true }}\n\n[[pools.api.backends]]\naddress = \"127.0.0.1:9101\"\nvm = \"vm-a\"\n"
    )
    .replace("target = 0.0, shape", "target = 0.5, adaptive = true, max_slowdown = 0.3, shape");
    let errors = errors_of(&src);
    assert_eq!(errors.len(), 1, "{errors:?}");
    // Pools are checked in name order: the second one named is at fault.
    assert_eq!(errors[0].path, "pools.web.drain");
    assert!(
        errors[0].to_string().contains("vm-a is also in pool \"api\""),
        "{}",
        errors[0]
    );
    // The same settings in both pools are fine.
    let same = src.replace("max_slowdown = 0.3, ", "");
    assert!(parse(&same).is_ok());
}

#[test]
fn a_qmp_monitor_of_a_vm_nothing_serves_is_an_error() {
    let errors = errors_of(
        "[[listeners]]\nname = \"l\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:1\"\nvm = \"vm-a\"\n[[qmp]]\nsocket = \"/a\"\nvm = \"vm-typo\"\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "qmp[0].vm");
    assert!(errors[0].message.contains("no pool"), "{}", errors[0].message);
}

#[test]
fn malformed_peer_urls_are_rejected() {
    for url in [
        "http://node b:9090",
        "http://host:+80",
        "http://host:0",
        "http://user@host:80",
        "http://host:80#x",
        "http://10.0.0.300:80",
        "http://-host:80",
        "http://[::1:80",
    ] {
        assert!(normalize_peer_url(url).is_err(), "{url} accepted");
    }
    for url in [
        "http://node-b:9090",
        "http://10.0.0.3:80/",
        "http://[::1]:9090",
        "http://a.b.c:1",
    ] {
        assert!(normalize_peer_url(url).is_ok(), "{url} refused");
    }
}

/// An http listener and one pool, with `listener` and `pool` lines added.
fn l7(listener: &str, pool: &str) -> String {
    format!(
        "[[listeners]]\nname = \"web\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n{listener}\n\n\
         [pools.web]\n{pool}\n[[pools.web.backends]]\naddress = \"127.0.0.1:9001\"\nvm = \"vm-a\"\n"
    )
}

#[test]
fn tls_http2_and_websocket_settings_of_an_http_listener() {
    let config = parse(&l7(
        "tls = { certificates = [{ cert = \"a.pem\", key = \"a.key\" }, { cert = \"b.pem\", key = \"b.key\" }], min_version = \"1.3\", reload = \"2s\" }",
        "",
    ))
    .unwrap();
    let listener = &config.listeners[0];
    let tls = listener.tls.as_ref().unwrap();
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(tls.certificates[1].key, PathBuf::from("b.key"));
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    assert_eq!(tls.reload, Duration::from_secs(2));
    assert!(listener.http2, "HTTP/2 is offered by ALPN by default with TLS");
    assert!(listener.websocket);
    let plain = parse(&l7("", "")).unwrap();
    assert!(!plain.listeners[0].http2, "no cleartext HTTP/2 unless asked");
    assert!(plain.listeners[0].tls.is_none());
    let h2c = parse(&l7("http2 = true\nwebsocket = false", "")).unwrap();
    assert!(h2c.listeners[0].http2 && !h2c.listeners[0].websocket);
}

#[test]
fn bad_tls_settings_name_their_field() {
    let cases = [
        ("tls = { certificates = [] }", "listeners[0].tls.certificates"),
        (
            "tls = { certificates = [{ cert = \"a.pem\" }] }",
            "listeners[0].tls.certificates[0].key",
        ),
        (
            "tls = { certificates = [{ cert = \"a\", key = \"b\" }], min_version = \"1.1\" }",
            "listeners[0].tls.min_version",
        ),
        (
            "tls = { certificates = [{ cert = \"a\", key = \"b\" }], reload = \"0s\" }",
            "listeners[0].tls.reload",
        ),
        (
            "tls = { certificates = [{ cert = \"a\", key = \"b\" }], sni = true }",
            "listeners[0].tls.sni",
        ),
        ("http2 = \"yes\"", "listeners[0].http2"),
    ];
    for (line, path) in cases {
        let errors = errors_of(&l7(line, ""));
        assert!(errors.iter().any(|e| e.path == path), "{line}: {errors:?}");
    }
    let tcp = "[[listeners]]\nname = \"t\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\
               tls = { certificates = [{ cert = \"a\", key = \"b\" }] }\n\n[pools.web]\n\
               [[pools.web.backends]]\naddress = \"127.0.0.1:9001\"\nvm = \"vm-a\"\n";
    let errors = errors_of(tcp);
    assert_eq!(errors[0].path, "listeners[0].tls");
    assert!(errors[0].message.contains("only http listeners"), "{errors:?}");
}

#[test]
fn a_pool_may_speak_h2_or_http1_over_tls_to_its_backends() {
    let config = parse(&l7(
        "",
        "protocol = \"h2\"\ntls = { ca = \"ca.pem\", server_name = \"backend.test\" }",
    ))
    .unwrap();
    let pool = config.pool("web").unwrap();
    assert_eq!(pool.protocol, UpstreamProtocol::H2);
    let tls = pool.tls.as_ref().unwrap();
    assert_eq!(tls.ca, Some(PathBuf::from("ca.pem")));
    assert_eq!(tls.server_name.as_deref(), Some("backend.test"));
    assert!(!tls.insecure);
    assert_eq!(
        parse(&l7("", "")).unwrap().pools[0].protocol,
        UpstreamProtocol::Http1
    );
    let insecure = parse(&l7("", "protocol = \"h2\"\ntls = { insecure = true }")).unwrap();
    assert!(insecure.pools[0].tls.as_ref().unwrap().insecure);
    // HTTP/1.1 over TLS too (the default protocol).
    let http1 = parse(&l7("", "tls = { ca = \"ca.pem\" }")).unwrap();
    assert_eq!(http1.pools[0].protocol, UpstreamProtocol::Http1);
    assert_eq!(
        http1.pools[0].tls.as_ref().unwrap().ca,
        Some(PathBuf::from("ca.pem"))
    );
    for (line, path) in [
        ("tls = {}", "pools.web.tls"),
        (
            "tls = { ca = \"ca.pem\", insecure = true }",
            "pools.web.tls.insecure",
        ),
        ("protocol = \"h3\"", "pools.web.protocol"),
    ] {
        let errors = errors_of(&l7("", line));
        assert!(errors.iter().any(|e| e.path == path), "{line}: {errors:?}");
    }
}

#[test]
fn every_error_is_reported_in_one_run_duplicates_included() {
    // A bad field in a pool and in a listener, and duplicates elsewhere: all at once.
    let errors = errors_of(
        "[[listeners]]\nname = \"l\"\nkind = \"tcp\"\nbind = \"127.0.0.1:7001\"\npool = \"p\"\n\
         [[listeners]]\nname = \"l\"\nkind = \"tcp\"\nbind = \"127.0.0.1:7001\"\npool = \"p\"\n\
         [[listeners]]\nname = \"m\"\nkind = \"tcp\"\nbind = \"nowhere\"\npool = \"p\"\n\
         [pools.p]\nalgorithm = \"fastest\"\n\
         [[pools.p.backends]]\naddress = \"127.0.0.1:1\"\nvm = \"vm-a\"\n\
         [[pools.p.backends]]\naddress = \"127.0.0.1:1\"\nvm = \"vm-b\"\n\
         [[peers]]\nname = \"x\"\nurl = \"http://a:1\"\n[[peers]]\nname = \"x\"\nurl = \"http://b:1\"\n",
    );
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    for expected in [
        "listeners[1].name",
        "listeners[1].bind",
        "listeners[2].bind",
        "pools.p.algorithm",
        "pools.p.backends[1].address",
        "peers[1].name",
    ] {
        assert!(paths.contains(&expected), "{expected} missing from {paths:?}");
    }
}

#[test]
fn deadlines_are_from_a_second_to_a_week() {
    let pool = |deadline: &str| {
        format!(
            "[pools.p]\ndeadline = \"{deadline}\"\n[[pools.p.backends]]\naddress = \"127.0.0.1:1\"\nvm = \"vm-a\"\n"
        )
    };
    assert_eq!(errors_of(&pool("500ms"))[0].path, "pools.p.deadline");
    assert_eq!(errors_of(&pool("169h"))[0].path, "pools.p.deadline");
    assert!(parse(&pool("1s")).is_ok());
    assert!(parse(&pool("168h")).is_ok());
}

#[test]
fn long_lived_work_is_closed_only_when_asked_and_only_by_pools() {
    assert_eq!(
        parse(&l7("", "")).unwrap().pools[0].drain.long_lived_close_after,
        None
    );
    let config = parse(&l7(
        "",
        "drain = { target = 0.0, long_lived = { close_after = \"30s\" } }",
    ))
    .unwrap();
    assert_eq!(
        config.pools[0].drain.long_lived_close_after,
        Some(Duration::from_secs(30))
    );
    let errors = errors_of(&l7("", "drain = { long_lived = { after = \"30s\" } }"));
    assert!(
        errors
            .iter()
            .any(|e| e.path == "pools.web.drain.long_lived.close_after"),
        "{errors:?}"
    );
    let driven = "[[haproxy]]\nname = \"h\"\nsocket = \"/run/h.sock\"\nserver_name_is_vm = true\n\
                  drain = { long_lived = { close_after = \"1s\" } }\n";
    let errors = errors_of(driven);
    assert_eq!(errors[0].path, "haproxy[0].drain.long_lived", "{errors:?}");
}

/// Found by the `config_reader` fuzz target: toml reports a dotted key of 80 or more parts as
/// "recursion limit" without a position, and the error named neither a line nor a field.
#[test]
fn a_key_of_too_many_parts_is_reported_with_its_line() {
    let errors = errors_of(&".".repeat(80));
    let limit: Vec<&ConfigError> = errors
        .iter()
        .filter(|e| e.message.contains("recursion limit"))
        .collect();
    assert_eq!(limit.len(), 1, "{errors:?}");
    assert_eq!(limit[0].line, Some(1));

    let deep = vec!["k"; 90].join(".");
    let src = format!("[control]\nbind = \"127.0.0.1:9090\"\n\n{deep} = 1\nname = \"x\"\n");
    let lines: Vec<Option<usize>> = errors_of(&src)
        .iter()
        .filter(|e| e.message.contains("recursion limit"))
        .map(|e| e.line)
        .collect();
    assert_eq!(lines, vec![Some(4)]);

    // Between other syntax errors, which bound where it is looked for.
    let src = format!("a = = 1\nb = \"\"\"\n{deep} = 0\n\"\"\"\nc = = 2\n{deep} = 1\nd = = 3\n");
    let errors = errors_of(&src);
    let limit: Vec<Option<usize>> = errors
        .iter()
        .filter(|e| e.message.contains("recursion limit"))
        .map(|e| e.line)
        .collect();
    assert_eq!(limit, vec![Some(6)], "{errors:?}");
}
