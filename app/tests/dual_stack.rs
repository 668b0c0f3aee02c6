//! Address families: by default the app binds `::` dual-stack and answers on IPv4 and IPv6
//! alike; an explicit `--bind` binds exactly that address.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};

use common::{App, get};

/// Whether this host can use the IPv6 loopback at all (some containers have no IPv6).
fn has_ipv6_loopback() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

#[test]
fn the_default_bind_answers_on_ipv4_and_ipv6_loopback() -> anyhow::Result<()> {
    let app = App::start_default_bind(&[])?;
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for port in [app.main.port(), app.admin.port()] {
        let path = if port == app.main.port() {
            "/"
        } else {
            "/readyz"
        };
        assert_eq!(get(at(v4, port), path)?.status, 200, "127.0.0.1:{port}");
    }
    if !has_ipv6_loopback() {
        eprintln!("note: this host has no IPv6 loopback; the [::1] half is skipped");
        return Ok(());
    }
    assert_eq!(
        app.main.ip(),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        "fell back to IPv4 on a host with IPv6:\n{}",
        app.log()
    );
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert_eq!(get(at(v6, app.main.port()), "/")?.status, 200);
    assert_eq!(get(at(v6, app.admin.port()), "/readyz")?.status, 200);
    Ok(())
}

#[test]
fn an_explicit_bind_binds_exactly_that_address() -> anyhow::Result<()> {
    // The fixture's usual 127.0.0.1: IPv4 only.
    let v4_only = App::start(&[])?;
    assert_eq!(get(v4_only.main, "/")?.status, 200);
    if !has_ipv6_loopback() {
        eprintln!("note: this host has no IPv6 loopback; the IPv6 checks are skipped");
        return Ok(());
    }
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert!(
        get(at(v6, v4_only.main.port()), "/").is_err(),
        "--bind 127.0.0.1 answered on [::1]"
    );

    let v6_only = App::start_on("::1", &[])?;
    assert_eq!(v6_only.main.ip(), v6);
    assert_eq!(get(v6_only.main, "/")?.status, 200);
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert!(
        get(at(v4, v6_only.main.port()), "/").is_err(),
        "--bind ::1 answered on 127.0.0.1"
    );
    Ok(())
}
