//! The tracker's dashboard and admin API end to end: the JSON routes against a real tracker
//! with real nodes (and hostile requests), and the page in a real headless Chromium, which
//! shows a swarm the test started and follows it as a second node fetches it, without a
//! reload.

use crate::exposition::http_get;
use crate::support::*;
use crate::webdriver::Browser;

/// A file name made of markup: the page must show it as text, never run it.
const HOSTILE: &str = "<img src=x onerror=\"document.title='pwned'\">.bin";

fn json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = http_get(addr, path);
    let v =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
    (code, v)
}

/// A tracker with HTTP, a seed holding a file named [`HOSTILE`], and a second node; returns
/// them with the content id and the ticket.
fn swarm(tmp: &std::path::Path) -> (TrackerProc, Daemon, Daemon, String, String) {
    let tracker = TrackerProc::start_with(
        &tmp.join("tracker"),
        "127.0.0.1:0",
        &["--allow-stated-region", "--http", "127.0.0.1:0"],
    );
    let t = tracker.addr.to_string();
    let seed = Daemon::start(&tmp.join("seed"), &["--tracker", &t, "--region", "eu-west"]);
    let leech = Daemon::start(&tmp.join("leech"), &["--tracker", &t, "--region", "us-east"]);
    let src = tmp.join(HOSTILE);
    write_file(&src, 2 * 1024 * 1024 + 3, 5);
    let ticket = seed.add(&src);
    let content = seed.ls()[0]["content_id"].as_str().unwrap().to_string();
    wait_until("the tracker knows the content", || {
        (tracker.metric("shoal_tracker_swarms") == 1).then_some(())
    });
    (tracker, seed, leech, content, ticket)
}

#[test]
fn the_admin_api_pages_swarms_and_nodes_and_refuses_bad_requests_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (tracker, seed, _leech, content, _) = swarm(tmp.path());
    let http = tracker.http.clone().unwrap();

    let (code, list) = json(&http, "/api/v1/swarms");
    assert_eq!(code, 200);
    let s = &list["swarms"][0];
    assert_eq!(
        (s["content"].as_str(), s["name"].as_str()),
        (Some(content.as_str()), Some(HOSTILE))
    );
    assert_eq!((s["holders"].as_u64(), s["complete_holders"].as_u64()), (Some(1), Some(1)));
    assert_eq!(s["available_pieces"], s["pieces"]);
    assert!(list["next"].is_null());
    // After the last id: empty. A page of one with more behind it names the next cursor.
    let (_, after) = json(&http, &format!("/api/v1/swarms?after={content}"));
    assert_eq!(after["swarms"].as_array().unwrap().len(), 0);
    let (_, one) = json(&http, "/api/v1/swarms?limit=1");
    assert_eq!(one["next"].as_str(), Some(content.as_str()));

    let (code, d) = json(&http, &format!("/api/v1/swarms/{content}?cells=100000&limit=5"));
    assert_eq!(code, 200);
    let cells = d["heatmap"]["cells"].as_u64().unwrap();
    let pieces = d["swarm"]["pieces"].as_u64().unwrap();
    assert!((1..=512).contains(&cells) && cells <= pieces, "{cells} cells for {pieces} pieces");
    assert_eq!(d["heatmap"]["min"].as_array().unwrap().len() as u64, cells);
    assert!(d["heatmap"]["min"].as_array().unwrap().iter().all(|v| v == 1));
    let h = &d["holders"][0];
    assert_eq!(h["node_id"].as_str(), Some(seed.node_id.as_str()));
    assert_eq!((h["have"].as_u64(), h["region"].as_str()), (Some(pieces), Some("eu-west")));
    // A huge holder offset is an empty page, not an error.
    let (code, far) = json(&http, &format!("/api/v1/swarms/{content}?from=18446744073709551615"));
    assert_eq!((code, far["holders"].as_array().unwrap().len()), (200, 0));

    let (_, nodes) = json(&http, "/api/v1/nodes?limit=99999999999999999999999999");
    let rows = nodes["nodes"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["role"] == "node" && r["stored_bytes"].is_null()));
    let (_, storage) = json(&http, "/api/v1/nodes?role=storage");
    assert_eq!(storage["nodes"].as_array().unwrap().len(), 0);
    let (_, o) = json(&http, "/api/v1/overview");
    assert_eq!((o["nodes"].as_u64(), o["swarms"].as_u64()), (Some(2), Some(1)));
    assert_eq!(o["tracker"]["node_id"].as_str(), Some(tracker.node_id.as_str()));
    wait_until("the regions snapshot", || {
        let (_, o) = json(&http, "/api/v1/overview");
        (o["regions"].as_array().unwrap().len() == 2).then_some(())
    });

    // Hostile requests: one clear error each, as JSON, and the tracker keeps serving.
    let long = "a".repeat(5000);
    let bad = [
        ("/api/v1/swarms/zzz".to_string(), 400, "not a content id"),
        (format!("/api/v1/swarms/{long}"), 400, "not a content id"),
        ("/api/v1/swarms/%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_string(), 400, "not a content id"),
        (format!("/api/v1/swarms/{}", "0".repeat(64)), 404, "knows no content"),
        ("/api/v1/swarms?after=nope".to_string(), 400, "not a content id"),
        ("/api/v1/swarms?limit=-1".to_string(), 400, "not a number"),
        ("/api/v1/swarms?limit=1e9".to_string(), 400, "not a number"),
        (format!("/api/v1/swarms/{content}?cells=x"), 400, "not a number"),
        (format!("/api/v1/swarms?x={long}"), 400, "query longer"),
        ("/api/v1/nodes?after=12D3Koo".to_string(), 400, "not a node id"),
        ("/api/v1/nodes?role=admin".to_string(), 400, "role=storage"),
        ("/api/v1/delete-everything".to_string(), 404, "no such route"),
    ];
    for (path, want, says) in bad {
        let (code, v) = json(&http, &path);
        let text = v["error"].as_str().unwrap_or_default();
        assert_eq!(code, want, "{path}: {v}");
        assert!(text.contains(says) && !text.contains('\n'), "{path}: {text}");
    }
    // Read-only: no route takes a POST.
    let r = ureq::post(&format!("http://{http}/api/v1/swarms")).call();
    assert!(matches!(r, Err(ureq::Error::Status(405 | 404, _))), "{r:?}");
    assert_eq!(http_get(&http, "/health"), (200, "ok\n".to_string()));
    // A page whose own name was rebound to this address (DNS rebinding) gets nothing; the
    // address itself and localhost do.
    let port = http.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
    for (host, want) in [("evil.example.com", 421), ("localhost", 200), ("127.0.0.1", 200)] {
        let r = ureq::get(&format!("http://{http}/api/v1/overview"))
            .set("Host", &format!("{host}:{port}"))
            .call();
        let code = match r {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(c, r)) => {
                let body = r.into_string().unwrap_or_default();
                assert!(body.contains("--http-host"), "{host}: {body}");
                c
            }
            Err(e) => panic!("{host}: {e}"),
        };
        assert_eq!(code, want, "{host}");
    }
    // A scraper by DNS name still gets the metrics.
    let r = ureq::get(&format!("http://{http}/metrics")).set("Host", "metrics.example.net").call();
    assert_eq!(r.map(|r| r.status()).ok(), Some(200));
}

#[test]
fn the_dashboard_shows_a_swarm_and_follows_it_in_a_real_browser() {
    let Some(browser) = Browser::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (tracker, _seed, leech, content, ticket) = swarm(tmp.path());
    let http = tracker.http.clone().unwrap();
    browser.goto(&format!("http://{http}/"));
    // The swarm appears with its one holder, its name shown as text.
    let row = format!("document.querySelector('#swarms tr[data-content=\"{content}\"]')");
    let cell = |class: &str| {
        format!("const r = {row}; return r ? r.querySelector('.{class}').textContent : null;")
    };
    browser.wait_for("the seed's swarm", &cell("holders"), |v| v == "1");
    assert_eq!(browser.eval(&cell("name")), HOSTILE);
    assert_eq!(browser.eval(&cell("complete")), "1");
    // The markup in the name stayed text: no element was made of it, nothing ran.
    assert_eq!(browser.eval("return document.querySelectorAll('img').length;"), 0);
    assert_eq!(browser.eval("return document.title;"), "Shoal tracker");
    browser.wait_for(
        "the nodes by region",
        "return [...document.querySelectorAll('#regions tbody tr')].map(r => r.dataset.region).join(',');",
        |v| v == "eu-west,us-east",
    );
    // Select it: the heatmap and its holder appear.
    browser.eval(&format!("{row}.click(); return null;"));
    let cells = browser.wait_for(
        "the heatmap",
        "return document.querySelectorAll('#heatmap .cell').length;",
        |v| v.as_u64().is_some_and(|n| n > 0),
    );
    assert!(cells.as_u64().unwrap() <= 512);
    assert_eq!(browser.eval("return document.getElementById('detail-name').textContent;"), HOSTILE);
    // A mark on the window: if the page reloaded, it would be gone.
    browser.eval("window.shoalTestMark = 42; return null;");

    // Another node fetches the content: the same page shows two complete holders.
    let out = tmp.path().join("out.bin");
    get_json(&leech.dir, &ticket, &out, &[]);
    browser.wait_for("the second holder", &cell("complete"), |v| v == "2");
    assert_eq!(browser.eval(&cell("holders")), "2");
    browser.wait_for(
        "the second holder in the detail",
        "return document.querySelectorAll('#holders tbody tr').length;",
        |v| v == 2,
    );
    assert_eq!(browser.eval("return window.shoalTestMark;"), 42, "the page was reloaded");
}
