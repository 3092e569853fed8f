use super::*;
use serde_json::json;

fn link(name: &str, mac: [u8; 6]) -> Link {
    Link {
        name: name.into(),
        mac,
    }
}

const MAC0: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const MAC1: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];

/// Two NICs as Nova describes them: the first by DHCP, the second static with a route
/// and its own resolver, plus a bond, an unknown network type, and a global resolver.
const NETWORK_DATA: &str = r#"{
  "links": [
    {"id": "tap-a", "type": "ovs", "ethernet_mac_address": "FA:16:3E:00:00:01", "mtu": 1450, "vif_id": "x"},
    {"id": "tap-b", "type": "phy", "ethernet_mac_address": "fa:16:3e:00:00:02", "mtu": null},
    {"id": "bond0", "type": "bond", "bond_links": ["tap-a", "tap-b"]}
  ],
  "networks": [
    {"id": "net0", "link": "tap-a", "type": "ipv4_dhcp", "network_id": "n0"},
    {"id": "net1", "link": "tap-b", "type": "ipv4", "ip_address": "10.9.1.5",
     "netmask": "255.255.255.0",
     "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.9.1.1"},
                {"network": "192.168.7.9", "netmask": "255.255.0.0", "gateway": "10.9.1.254"}],
     "services": [{"type": "dns", "address": "10.9.1.53"}]},
    {"id": "net2", "link": "tap-b", "type": "ipv6", "ip_address": "2001:db8::5/64",
     "routes": [{"network": "::", "netmask": "::", "gateway": "2001:db8::1"}]},
    {"id": "net3", "link": "tap-b", "type": "ipv6_dhcpv6-stateful"},
    {"id": "net4", "link": "bond0", "type": "ipv4_dhcp"},
    {"id": "net5", "link": "tap-a", "type": "infiniband"}
  ],
  "services": [{"type": "dns", "address": "8.8.4.4"}, {"type": "ntp", "address": "10.0.0.1"}]
}"#;

#[test]
fn openstack_network_data() {
    let (config, warnings) = openstack::parse(NETWORK_DATA).unwrap();
    assert_eq!(config.links.len(), 2);
    let a = config.for_link(&link("eth0", MAC0)).unwrap();
    assert!(a.dhcp4 && a.addresses.is_empty());
    assert_eq!(a.mtu, Some(1450));
    let b = config.for_link(&link("eth1", MAC1)).unwrap();
    assert!(!b.dhcp4 && b.dhcp6);
    let addresses: Vec<String> = b.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(addresses, ["10.9.1.5/24", "2001:db8::5/64"]);
    let routes: Vec<String> = b
        .routes
        .iter()
        .map(|r| format!("{} via {}", r.to, r.via))
        .collect();
    assert_eq!(
        routes,
        [
            "0.0.0.0/0 via 10.9.1.1",
            "192.168.0.0/16 via 10.9.1.254",
            "::/0 via 2001:db8::1"
        ]
    );
    assert_eq!(b.nameservers, ["10.9.1.53".parse::<IpAddr>().unwrap()]);
    assert_eq!(config.nameservers, ["8.8.4.4".parse::<IpAddr>().unwrap()]);
    assert!(config.for_link(&link("eth2", [2; 6])).is_none());
    let said = warnings.join("\n");
    for part in ["bond0", "DHCPv6", "net4", "infiniband", "\"ntp\""] {
        assert!(said.contains(part), "{part} not in {said}");
    }
    // What the agent writes is what berth-net reads back.
    assert_eq!(NetworkConfig::from_json(&config.to_json()).unwrap(), config);
}

#[test]
fn openstack_errors_name_the_field() {
    let bad_mask = NETWORK_DATA.replace("255.255.255.0", "255.0.255.0");
    let err = openstack::parse(&bad_mask).unwrap_err().to_string();
    assert!(err.starts_with("networks[1].ip_address"), "{err}");
    let bad_mac = NETWORK_DATA.replace("fa:16:3e:00:00:02", "fa:16:3e:00:02");
    let err = openstack::parse(&bad_mac).unwrap_err().to_string();
    assert!(err.starts_with("links[1].ethernet_mac_address"), "{err}");
    let mixed = NETWORK_DATA.replace("\"2001:db8::1\"", "\"10.9.1.1\"");
    let err = openstack::parse(&mixed).unwrap_err().to_string();
    assert!(err.contains("mixed IPv4 and IPv6"), "{err}");
    assert!(matches!(
        openstack::parse("{\"links\": 3}"),
        Err(ConfigError::Syntax(_))
    ));
}

#[test]
fn cloud_config_v1() {
    let doc = json!({
        "version": 1,
        "config": [
            {"type": "physical", "name": "eth0", "subnets": [{"type": "dhcp"}]},
            {"type": "physical", "name": "eth1", "mac_address": "fa:16:3e:00:00:02", "mtu": 9000,
             "subnets": [{"type": "static", "address": "10.9.1.5", "netmask": "255.255.255.0",
                          "gateway": "10.9.1.1", "dns_nameservers": ["10.9.1.53"],
                          "dns_search": ["corp.example"],
                          "routes": [{"network": "172.16.0.0", "netmask": "255.240.0.0",
                                      "gateway": "10.9.1.254"}],
                          "control": "auto"},
                         {"type": "static6", "address": "2001:db8::5/64"}]},
            {"type": "bond", "name": "bond0"},
            {"type": "nameserver", "address": "8.8.8.8", "search": ["example.org"]}
        ]
    });
    let (config, warnings) = cloud_config::parse(doc).unwrap();
    assert_eq!(config.links.len(), 2);
    assert!(config.for_link(&link("eth0", [2; 6])).unwrap().dhcp4);
    // By MAC when given, whatever the kernel named it.
    let b = config.for_link(&link("ens4", MAC1)).unwrap();
    assert_eq!(b.mtu, Some(9000));
    assert_eq!(b.addresses.len(), 2);
    assert_eq!(b.routes[0].to.to_string(), "0.0.0.0/0");
    assert_eq!(b.routes[1].to.to_string(), "172.16.0.0/12");
    assert_eq!(b.search, ["corp.example"]);
    assert_eq!(config.nameservers, ["8.8.8.8".parse::<IpAddr>().unwrap()]);
    assert_eq!(config.search, ["example.org"]);
    let said = warnings.join("\n");
    assert!(said.contains("config[2]: type \"bond\""), "{said}");
    assert!(said.contains("subnets[0].control"), "{said}");
}

#[test]
fn cloud_config_v2() {
    let doc = json!({
        "version": 2,
        "renderer": "NetworkManager",
        "ethernets": {
            "primary": {"match": {"name": "en*"}, "dhcp4": true, "mtu": 1460},
            "second": {"match": {"macaddress": "FA:16:3E:00:00:02"}, "set-name": "lan",
                       "addresses": ["10.9.1.5/24", "2001:db8::5/64"], "gateway4": "10.9.1.1",
                       "routes": [{"to": "10.20.0.0/16", "via": "10.9.1.254", "metric": 5},
                                  {"to": "default", "via": "2001:db8::1"}],
                       "nameservers": {"addresses": ["10.9.1.53"], "search": ["corp.example"]},
                       "wakeonlan": true},
            "eth2": {"dhcp4": false}
        },
        "bonds": {"bond0": {}}
    });
    let (config, warnings) = cloud_config::parse(doc).unwrap();
    let p = config.for_link(&link("ens3", MAC0)).unwrap();
    assert!(p.dhcp4 && p.mtu == Some(1460));
    assert!(config.for_link(&link("eth0", MAC0)).is_none());
    let s = config.for_link(&link("eth1", MAC1)).unwrap();
    let routes: Vec<String> = s
        .routes
        .iter()
        .map(|r| format!("{} via {}", r.to, r.via))
        .collect();
    assert_eq!(
        routes,
        [
            "0.0.0.0/0 via 10.9.1.1",
            "10.20.0.0/16 via 10.9.1.254",
            "::/0 via 2001:db8::1"
        ]
    );
    assert_eq!(s.search, ["corp.example"]);
    let e = config.for_link(&link("eth2", [3; 6])).unwrap();
    assert!(!e.dhcp4 && e.addresses.is_empty());
    let said = warnings.join("\n");
    for part in [
        "network.bonds",
        "renderer",
        "set-name",
        "second.wakeonlan",
        "routes[0].metric",
    ] {
        assert!(said.contains(part), "{part} not in {said}");
    }
}

#[test]
fn cloud_config_errors_name_the_key() {
    let err = |doc: serde_json::Value| cloud_config::parse(doc).unwrap_err().to_string();
    assert!(err(json!({"ethernets": {}})).starts_with("network.version: missing"));
    assert!(err(json!({"version": 3})).contains("3 is not 1 or 2"));
    let e = err(json!({"version": 2, "ethernets": {"e": {"addresses": ["10.0.0.1"]}}}));
    assert!(e.starts_with("network.ethernets.e.addresses[0]"), "{e}");
    let e = err(json!({"version": 2, "ethernets": {"e": {"dhcp4": "maybe"}}}));
    assert!(
        e.starts_with("network:") && e.contains("invalid type"),
        "{e}"
    );
    let e = err(json!({"version": 2, "ethernets": {"e": {"mtu": 20}}}));
    assert!(e.contains("outside 68..=65535"), "{e}");
    let e = err(
        json!({"version": 1, "config": [{"type": "physical", "name": "eth0",
        "subnets": [{"type": "static", "address": "10.0.0.2"}]}]}),
    );
    assert!(e.contains("has no netmask"), "{e}");
    let (off, _) = cloud_config::parse(json!({"config": "disabled"})).unwrap();
    assert!(off.links.is_empty());
}

#[test]
fn matching_and_netmasks() {
    let m = |mac: Option<&str>, name: Option<&str>| LinkMatch {
        mac: mac.map(|m| m.parse().unwrap()),
        name: name.map(str::to_string),
    };
    let eth0 = link("eth0", MAC0);
    assert!(m(None, Some("eth?")).matches(&eth0));
    assert!(m(None, Some("*")).matches(&eth0));
    assert!(!m(None, Some("en*")).matches(&eth0));
    assert!(m(Some("fa:16:3e:00:00:01"), Some("e*")).matches(&eth0));
    assert!(!m(Some("fa:16:3e:00:00:02"), Some("e*")).matches(&eth0));
    assert!(!m(None, None).matches(&eth0));
    let p = |s: &str| netmask_prefix(s.parse().unwrap());
    assert_eq!(p("255.255.255.0"), Some(24));
    assert_eq!(p("0.0.0.0"), Some(0));
    assert_eq!(p("255.255.255.255"), Some(32));
    assert_eq!(p("255.0.255.0"), None);
    assert_eq!(p("ffff:ffff:ffff:ffff::"), Some(64));
    assert_eq!(
        NetworkConfig::from_json("{\"links\": [{\"match\": {}}]}")
            .unwrap_err()
            .to_string(),
        "links[0].match: needs a mac or a name"
    );
}
