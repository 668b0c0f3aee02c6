//! loadgen classifies every failure against real misbehaving servers on loopback, keeps its
//! bounds, and reconnects only when the server closed the connection between requests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use loadgen::{ConnectionMode, Control, ErrorKind, LoadSpec, Report};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the scripted server treats each request.
#[derive(Clone, Copy)]
enum Behaviour {
    Ok,
    OkThenClose,
    Status503,
    CloseWithoutAnswer,
    Reset,
    Silent,
}

/// Reads one request head; false on EOF.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 1024];
    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

async fn serve(behaviour: Behaviour) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                while read_head(&mut stream).await {
                    let reply: &[u8] = match behaviour {
                        Behaviour::Ok => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                        Behaviour::OkThenClose => {
                            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
                        }
                        Behaviour::Status503 => {
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                        }
                        Behaviour::CloseWithoutAnswer => return,
                        Behaviour::Reset => {
                            let _ = stream.set_zero_linger();
                            return;
                        }
                        Behaviour::Silent => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                    };
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                    if matches!(behaviour, Behaviour::OkThenClose) {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn run(addr: SocketAddr, requests: u64) -> anyhow::Result<Report> {
    let spec = LoadSpec::new(addr, "/")
        .concurrency(2)
        .max_requests(requests)
        .duration(Duration::from_secs(10))
        .request_timeout(Duration::from_millis(300));
    loadgen::run(spec, Control::new()).await
}

fn only_kind(report: &Report, kind: ErrorKind, count: usize) {
    assert_eq!(report.count(), count, "{report}");
    assert_eq!(report.errors(), count, "{report}");
    assert_eq!(report.errors_by_kind().get(&kind), Some(&count), "{report}");
}

#[tokio::test]
async fn failures_are_recorded_by_kind_and_never_retried() -> anyhow::Result<()> {
    let refused = {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        listener.local_addr()?
    };
    only_kind(&run(refused, 4).await?, ErrorKind::ConnectRefused, 4);
    let eof = serve(Behaviour::CloseWithoutAnswer).await?;
    only_kind(&run(eof, 4).await?, ErrorKind::EofBeforeResponse, 4);
    let reset = serve(Behaviour::Reset).await?;
    only_kind(&run(reset, 4).await?, ErrorKind::Reset, 4);
    let unavailable = serve(Behaviour::Status503).await?;
    let report = run(unavailable, 4).await?;
    only_kind(&report, ErrorKind::Non2xx, 4);
    assert!(report.records.iter().all(|r| r.status == Some(503)));
    let silent = serve(Behaviour::Silent).await?;
    only_kind(&run(silent, 2).await?, ErrorKind::Timeout, 2);
    Ok(())
}

#[tokio::test]
async fn keep_alive_reuses_and_reconnects_only_after_a_close() -> anyhow::Result<()> {
    let ok = serve(Behaviour::Ok).await?;
    let report = run(ok, 20).await?;
    assert_eq!(report.count(), 20);
    assert_eq!(report.errors(), 0, "{report}");
    assert_eq!(
        report.records.iter().filter(|r| r.new_connection).count(),
        2
    );

    let closing = serve(Behaviour::OkThenClose).await?;
    let report = run(closing, 20).await?;
    assert_eq!(report.errors(), 0, "{report}");
    assert!(
        report
            .records
            .iter()
            .all(|r| r.new_connection && r.connection_close)
    );

    let spec = LoadSpec::new(ok, "/")
        .mode(ConnectionMode::Close)
        .max_requests(5);
    let report = loadgen::run(spec, Control::new()).await?;
    assert_eq!(report.errors(), 0, "{report}");
    assert!(report.records.iter().all(|r| r.new_connection));
    Ok(())
}

#[tokio::test]
async fn bounds_and_controls_end_the_run() -> anyhow::Result<()> {
    let ok = serve(Behaviour::Ok).await?;
    let started = Instant::now();
    let spec = LoadSpec::new(ok, "/")
        .concurrency(4)
        .max_requests(u64::MAX)
        .duration(Duration::from_millis(300));
    let report = loadgen::run(spec, Control::new()).await?;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(report.count() > 0);

    let control = Control::new();
    let spec = LoadSpec::new(ok, "/")
        .concurrency(4)
        .max_requests(u64::MAX)
        .duration(Duration::from_secs(60));
    let handle = tokio::spawn(loadgen::run(spec, control.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    control.stop();
    let report = tokio::time::timeout(Duration::from_secs(10), handle).await???;
    assert_eq!(report.errors(), 0);
    assert_eq!(control.finished(), report.count() as u64);
    Ok(())
}
