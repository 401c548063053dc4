//! The guard with private targets refused: loopback by IPv4 and IPv6 literal and by name
//! never get a request. (A redirect to a private address needs a public origin to start
//! from; `guard::tests::checks_each_hop` tests the check each hop goes through.)

use super::hostile::Hostile;
use super::{config, fetch, random_bytes};
use crate::origin::guard::is_private;
use crate::origin::{Config, Origin, OriginError, Resource, Validators};

fn guarded() -> Origin {
    Origin::new(Config { allow_private: false, ..config() }).unwrap()
}

#[tokio::test]
async fn refuses_loopback_by_literal_and_by_name() {
    let data = random_bytes(100, 11);
    let server =
        Hostile::start(move |_, _| axum::response::Response::new(data.clone().into())).await;
    let port = server.addr.port();
    let origin = guarded();
    for (url, host) in [
        (format!("http://127.0.0.1:{port}/f"), "127.0.0.1"),
        (format!("http://[::1]:{port}/f"), "[::1]"),
        (format!("http://0x7f000001:{port}/f"), "127.0.0.1"),
        // A name: refused by the resolver, whatever order its addresses come in. Refused
        // rather than GaveUp also shows a refusal is not retried.
        (format!("http://localhost:{port}/f"), "localhost"),
    ] {
        match origin.probe(&url).await {
            Err(e @ OriginError::Refused { .. }) => {
                let OriginError::Refused { host: h, addr } = &e else { unreachable!() };
                assert_eq!(h, host, "{url}");
                assert!(is_private(*addr), "{url}: {addr}");
                assert!(e.to_string().contains("--offline-allow-private"), "{e}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    // A stored resource pointing there is refused too, before any request.
    let res = Resource {
        url: server.url("/f").parse().unwrap(),
        len: 100,
        validators: Validators::default(),
        ranges: true,
    };
    let (result, got) = fetch(&origin, &res, 0, 100).await;
    assert!(matches!(result, Err(OriginError::Refused { .. })), "{result:?}");
    assert_eq!(got.delivered, 0);
    assert_eq!(server.seen().len(), 0, "a request reached the server");

    // The same server is reachable once the operator allows it: the refusals above were the
    // guard's, not a dead server's.
    let res = Origin::new(config()).unwrap().probe(&server.url("/f")).await.unwrap();
    assert_eq!((res.len, res.ranges), (100, false));
    assert_eq!(server.seen().len(), 1);
}
