//! Node identity and `--reuse-port`: every `welcome` and `/stats` name this
//! run's node (a name and a random part drawn at each start), and with
//! `--reuse-port` several daemons share one address, the kernel spreading
//! connections over them.

mod support;

use std::collections::BTreeSet;

use support::*;

fn is_node_id(id: &str, name: &str) -> bool {
    id.strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[test]
fn welcome_and_stats_name_the_node_and_a_restart_is_a_new_node() {
    let server = Server::start(&["--node-name", "edge-1"]);
    let mut c = server.client("/ws?user=ann");
    let node = c.expect("welcome")["node"].as_str().unwrap().to_string();
    assert!(is_node_id(&node, "edge-1"), "{node}");
    let stats = server.stats();
    assert_eq!(stats["node"], node.as_str());
    assert_eq!(stats["cluster"]["state"], "off");
    drop(c);
    drop(server);
    let again = Server::start(&["--node-name", "edge-1"]);
    let id = again.stats()["node"].as_str().unwrap().to_string();
    assert!(is_node_id(&id, "edge-1") && id != node, "{id} after {node}");
}

#[test]
fn the_default_name_is_host_and_port() {
    let server = Server::start(&[]);
    let id = server.stats()["node"].as_str().unwrap().to_string();
    let port = server.addr.port();
    let name = id.rsplit_once('-').unwrap().0;
    assert!(name.ends_with(&format!(":{port}")), "{id}");
    assert!(name.len() > format!(":{port}").len(), "a host name: {id}");
}

#[test]
fn reuse_port_lets_two_daemons_share_one_address() {
    let first = Server::start(&["--reuse-port", "true", "--node-name", "one"]);
    let listen = first.addr.to_string();
    let second = Server::start(&[
        "--listen",
        &listen,
        "--reuse-port",
        "true",
        "--node-name",
        "two",
    ]);
    assert_eq!(second.addr, first.addr);
    let mut nodes = BTreeSet::new();
    let mut clients = Vec::new();
    for i in 0..40 {
        let mut c = Client::connect(first.addr, &format!("/ws?user=u{i}"));
        let node = c.expect("welcome")["node"].as_str().unwrap().to_string();
        nodes.insert(node.split('-').next().unwrap().to_string());
        clients.push(c);
    }
    assert_eq!(
        nodes,
        BTreeSet::from(["one".to_string(), "two".to_string()])
    );
    // Without the option, the address is taken.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--listen", &listen])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
}
