//! Schemas of the control API's values that the `ToSchema` derive cannot describe by itself: IP
//! addresses and maps of socket addresses (std's types, parsed by `FromStr`). Only with the
//! `openapi` feature; what the API does with them is in [`crate::api`].

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type};

/// An IPv4 address as `std::net::Ipv4Addr` reads it (four decimal octets, no leading zero).
const IPV4: &str =
    r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}";

/// An IPv6 address in hexadecimal groups, `::` for a run of zeros (a subset of what
/// `std::net::Ipv6Addr` reads: no embedded IPv4 part).
const IPV6: &str = concat!(
    "(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|",
    "([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|",
    "([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|",
    "([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|",
    ":((:[0-9a-fA-F]{1,4}){1,7}|:))"
);

/// A port, 0 to 65535, without leading zeros.
const PORT: &str = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)";

/// `IP:port` or `[IPv6]:port`, as `std::net::SocketAddr` reads it.
pub fn socket_address_pattern() -> String {
    format!("^({IPV4}|\\[{IPV6}\\]):{PORT}$")
}

/// A socket address as the API takes one in a path or a body field (`10.0.0.7:8080`,
/// `[fd00::7]:8080`): a string with [`socket_address_pattern`].
pub struct SocketAddress;

impl utoipa::PartialSchema for SocketAddress {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(socket_address_pattern()))
            .description(Some("IP:port, or [IPv6]:port"))
            .examples([serde_json::json!("10.0.0.7:8080")])
            .into()
    }
}

impl utoipa::ToSchema for SocketAddress {}

/// An IP address (`10.0.1.7`, `fd00::7`).
pub fn ip_address() -> Schema {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv4))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv6))),
        )
        .description(Some("An IPv4 or IPv6 address"))
        .examples([serde_json::json!("10.0.1.7")])
        .into()
}

/// An optional IP address (absent or `null`: none).
pub fn optional_ip_address() -> Schema {
    OneOfBuilder::new()
        .item(ip_address())
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

/// A map of socket addresses: configured address → new address.
pub fn socket_address_map() -> Schema {
    let address = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(socket_address_pattern()))
            .description(Some("IP:port, or [IPv6]:port"))
    };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(address()))
        .additional_properties(Some(RefOr::T(Schema::Object(address().build()))))
        .description(Some(
            "Explicit moves, configured address → new address (take precedence over `new_ip`)",
        ))
        .examples([serde_json::json!({"10.0.0.7:8080": "10.0.1.7:8080"})])
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anchored at both ends (JSON Schema's `pattern` matches anywhere otherwise), with an IPv4
    /// and a bracketed IPv6 branch. That what it matches parses as a `SocketAddr` is checked by
    /// schemathesis, which sends addresses drawn from it to a live node
    /// (`crates/handover/tests/openapi.rs`: a valid body refused fails the run).
    #[test]
    fn the_socket_address_pattern_is_anchored_with_both_families() {
        let pattern = socket_address_pattern();
        assert!(pattern.starts_with("^(") && pattern.ends_with(")$"), "{pattern}");
        assert!(pattern.contains(IPV4) && pattern.contains(&format!("\\[{IPV6}\\]")));
    }
}
