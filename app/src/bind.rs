//! Binding both listeners: dual-stack `::` by default, so that the app answers on IPv6 and
//! IPv4 alike (a cluster may give pods either family, or both), with a fall-back to `0.0.0.0`
//! on a host without IPv6.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::TcpListener;
use tracing::info;

use crate::error::AppError;
use crate::metrics::ListenerKind;

/// The accept backlog, as tokio's `TcpListener::bind` uses: clients beyond the connection
/// limit wait here.
const BACKLOG: i32 = 1024;

/// Binds the main and the admin listener on `ip`, or, without one, on `::` dual-stack with a
/// fall-back to `0.0.0.0`. The fall-back is decided on the main listener and then holds for
/// both, so the two never end up on different families.
pub fn bind_listeners(
    ip: Option<IpAddr>,
    port: u16,
    admin_port: u16,
) -> Result<(TcpListener, TcpListener), AppError> {
    let main_and_ip = match ip {
        Some(ip) => bind(ListenerKind::Main, ip, port).map(|main| (main, ip)),
        None => {
            let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
            match try_bind(SocketAddr::new(any6, port)) {
                Ok(main) => Ok((main, any6)),
                Err(failure) if failure.means_no_ipv6() => {
                    info!(
                        error = %failure.source,
                        "no IPv6 on this host: binding 0.0.0.0 (IPv4 only) instead of ::"
                    );
                    let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                    bind(ListenerKind::Main, any4, port).map(|main| (main, any4))
                }
                Err(failure) => Err(bind_error(
                    ListenerKind::Main,
                    SocketAddr::new(any6, port),
                    failure.source,
                )),
            }
        }
    };
    let (main, ip) = main_and_ip?;
    let admin = bind(ListenerKind::Admin, ip, admin_port)?;
    Ok((main, admin))
}

fn bind(kind: ListenerKind, ip: IpAddr, port: u16) -> Result<TcpListener, AppError> {
    let addr = SocketAddr::new(ip, port);
    try_bind(addr).map_err(|failure| bind_error(kind, addr, failure.source))
}

fn bind_error(kind: ListenerKind, addr: SocketAddr, source: io::Error) -> AppError {
    AppError::Bind {
        listener: kind.as_str(),
        addr,
        source,
    }
}

/// A failed bind, and whether it failed before `bind(2)` itself.
struct BindFailure {
    source: io::Error,
    /// The socket could not be created or set up: for `::` that means the kernel has no IPv6
    /// (EAFNOSUPPORT) or no dual-stack; nothing about the address or port.
    before_bind: bool,
}

impl BindFailure {
    fn at_setup(source: io::Error) -> Self {
        Self {
            source,
            before_bind: true,
        }
    }

    fn at_bind(source: io::Error) -> Self {
        Self {
            source,
            before_bind: false,
        }
    }

    /// Whether `::` failed for want of IPv6 (EAFNOSUPPORT at socket creation, EADDRNOTAVAIL
    /// at bind), as opposed to a port in use or a missing permission, which 0.0.0.0 would
    /// not fix and which must fail loudly.
    fn means_no_ipv6(&self) -> bool {
        self.before_bind || self.source.kind() == io::ErrorKind::AddrNotAvailable
    }
}

/// One listening socket with the settings of tokio's `TcpListener::bind` (SO_REUSEADDR, so a
/// restart does not wait out TIME_WAIT; the same backlog), plus IPV6_V6ONLY off on `::`, set
/// explicitly because the kernel default (net.ipv6.bindv6only) may differ from host to host.
/// A specific IPv6 address keeps the kernel default: it serves that one address either way.
fn try_bind(addr: SocketAddr) -> Result<TcpListener, BindFailure> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(BindFailure::at_setup)?;
    if let IpAddr::V6(ip) = addr.ip()
        && ip.is_unspecified()
    {
        socket.set_only_v6(false).map_err(BindFailure::at_setup)?;
    }
    socket
        .set_reuse_address(true)
        .map_err(BindFailure::at_setup)?;
    socket
        .set_nonblocking(true)
        .map_err(BindFailure::at_setup)?;
    socket
        .bind(&SockAddr::from(addr))
        .map_err(BindFailure::at_bind)?;
    socket.listen(BACKLOG).map_err(BindFailure::at_bind)?;
    TcpListener::from_std(std::net::TcpListener::from(socket)).map_err(BindFailure::at_bind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_ipv6_falls_back() {
        let setup = BindFailure::at_setup(io::Error::from(io::ErrorKind::Unsupported));
        assert!(setup.means_no_ipv6());
        let no_addr = BindFailure::at_bind(io::Error::from(io::ErrorKind::AddrNotAvailable));
        assert!(no_addr.means_no_ipv6());
        let in_use = BindFailure::at_bind(io::Error::from(io::ErrorKind::AddrInUse));
        assert!(
            !in_use.means_no_ipv6(),
            "a port in use must fail, not fall back"
        );
        let denied = BindFailure::at_bind(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(!denied.means_no_ipv6());
    }
}
