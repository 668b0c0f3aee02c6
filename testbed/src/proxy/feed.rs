//! The proxy's view of the API: Service and EndpointSlice watches whose changes reach the table
//! only after the propagation delay, in the order they were seen (a large cluster's sync lag).

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::table::Table;

/// One observed change, ready to be applied to a table.
#[derive(Debug, Clone)]
pub enum Change {
    Service(Service),
    ServiceGone(Service),
    /// A complete relist: replaces every service.
    AllServices(Vec<Service>),
    Slice(EndpointSlice),
    SliceGone(EndpointSlice),
    AllSlices(Vec<EndpointSlice>),
}

impl Change {
    pub fn apply(self, table: &mut Table) {
        match self {
            Change::Service(s) => table.apply_service(&s),
            Change::ServiceGone(s) => table.delete_service(&s),
            Change::AllServices(all) => {
                table.clear_services();
                for s in &all {
                    table.apply_service(s);
                }
            }
            Change::Slice(s) => table.apply_slice(&s),
            Change::SliceGone(s) => table.delete_slice(&s),
            Change::AllSlices(all) => {
                table.clear_slices();
                for s in &all {
                    table.apply_slice(s);
                }
            }
        }
    }
}

/// Turns a watcher stream into changes; a relist is gathered and sent as one replacement.
async fn forward<K, S>(
    mut events: S,
    tx: mpsc::UnboundedSender<(Instant, Change)>,
    one: fn(K) -> Change,
    gone: fn(K) -> Change,
    all: fn(Vec<K>) -> Change,
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    let mut relist: Vec<K> = Vec::new();
    while let Some(event) = events.next().await {
        let change = match event {
            Ok(Event::Apply(k)) => one(k),
            Ok(Event::Delete(k)) => gone(k),
            Ok(Event::Init) => {
                relist.clear();
                continue;
            }
            Ok(Event::InitApply(k)) => {
                relist.push(k);
                continue;
            }
            Ok(Event::InitDone) => all(std::mem::take(&mut relist)),
            Err(e) => {
                tracing::warn!(error = %e, "proxy watch error");
                continue;
            }
        };
        if tx.send((Instant::now(), change)).is_err() {
            return;
        }
    }
}

/// Starts both watches; returns the receiving end of the (undelayed) change stream.
pub fn watch(client: kube::Client) -> mpsc::UnboundedReceiver<(Instant, Change)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let services = watcher::watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .boxed();
    let slices = watcher::watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .boxed();
    tokio::spawn(forward(
        services,
        tx.clone(),
        Change::Service,
        Change::ServiceGone,
        Change::AllServices,
    ));
    tokio::spawn(forward(
        slices,
        tx,
        Change::Slice,
        Change::SliceGone,
        Change::AllSlices,
    ));
    rx
}

/// Waits until the oldest change is `delay` old and returns it (FIFO: the delay is constant).
pub async fn next_due(
    rx: &mut mpsc::UnboundedReceiver<(Instant, Change)>,
    delay: Duration,
) -> Option<Change> {
    let (seen, change) = rx.recv().await?;
    tokio::time::sleep_until(seen + delay).await;
    Some(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_arrive_in_order_and_not_before_the_delay() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sent = Instant::now();
        for name in ["a", "b"] {
            let mut svc = Service::default();
            svc.metadata.name = Some(name.into());
            tx.send((Instant::now(), Change::Service(svc))).unwrap();
        }
        let delay = Duration::from_millis(80);
        for want in ["a", "b"] {
            let Some(Change::Service(svc)) = next_due(&mut rx, delay).await else {
                panic!("expected a service change");
            };
            assert_eq!(svc.metadata.name.as_deref(), Some(want));
            assert!(sent.elapsed() >= delay);
        }
        drop(tx);
        assert!(next_due(&mut rx, delay).await.is_none());
    }
}
