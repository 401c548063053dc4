//! Local security: the control API answers only its token holder (every route but the
//! harmless `/metrics`), and names from manifests reach the terminal escaped.

use std::os::unix::fs::PermissionsExt;

use crate::support::*;

fn control(dir: &std::path::Path) -> (String, String) {
    let path = dir.join("control.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control.json is private to its owner");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    (v["addr"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
}

fn status_of(r: Result<ureq::Response, ureq::Error>) -> u16 {
    match r {
        Ok(resp) => resp.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("transport error: {e}"),
    }
}

#[test]
fn every_control_route_but_metrics_needs_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("a"), &[]);
    let src = tmp.path().join("secret-name.bin");
    write_file(&src, 50_000, 3);
    let ticket = d.add(&src);
    let (addr, token) = control(&d.dir);
    assert_eq!(token.len(), 64, "256 bits as hex");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    // A guess of the right length that differs only in its last character is refused like any
    // other wrong token.
    let mut near = token.clone().into_bytes();
    let last = near.len() - 1;
    near[last] = if near[last] == b'0' { b'1' } else { b'0' };
    let near = String::from_utf8(near).unwrap();
    let body = serde_json::json!({ "path": src, "ticket": ticket, "output": tmp.path().join("o") });
    let routes = [
        ("GET", "/v1/status"),
        ("GET", "/v1/ls"),
        ("POST", "/v1/add"),
        ("POST", "/v1/get"),
        ("POST", "/v1/push"),
    ];
    for (method, route) in routes {
        let url = format!("http://{addr}{route}");
        for auth in [None, Some(format!("Bearer {near}")), Some("Bearer ".to_string())] {
            let mut req = ureq::request(method, &url);
            if let Some(a) = &auth {
                req = req.set("authorization", a);
            }
            let code = status_of(if method == "GET" { req.call() } else { req.send_json(&body) });
            assert_eq!(code, 401, "{method} {route} with {auth:?}");
        }
    }
    // The right token works.
    let ok = ureq::get(&format!("http://{addr}/v1/ls"))
        .set("authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert!(ok.into_string().unwrap().contains("secret-name.bin"));
    // A malformed tracker is refused with its reason, not tried as a host name.
    let bad = serde_json::json!({
        "ticket": ticket, "output": tmp.path().join("o2"), "tracker": "not-an-id@127.0.0.1:1"
    });
    let r = ureq::post(&format!("http://{addr}/v1/get"))
        .set("authorization", &format!("Bearer {token}"))
        .send_json(&bad);
    match r {
        Err(ureq::Error::Status(400, resp)) => {
            let text = resp.into_string().unwrap();
            assert!(text.contains("cannot read tracker"), "{text}");
        }
        other => panic!("expected 400, got {other:?}"),
    }
    // /metrics needs no token and says nothing about what the node holds.
    let metrics =
        ureq::get(&format!("http://{addr}/metrics")).call().unwrap().into_string().unwrap();
    assert!(metrics.contains("shoal_uploaded_bytes_total"));
    let content_id = d.ls()[0]["content_id"].as_str().unwrap().to_string();
    assert!(!metrics.contains(&content_id[..16]) && !metrics.contains("secret-name"));
}

#[test]
fn a_new_data_dir_is_private_to_its_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fresh").join("data");
    let mut c = shoal(&dir);
    c.arg("user");
    ok(c);
    for d in [&dir, dir.parent().unwrap()] {
        let mode = std::fs::metadata(d).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{} is private", d.display());
    }
}

#[test]
fn names_from_manifests_are_shown_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("a"), &[]);
    // A file name carrying a terminal escape sequence (clear screen) and a newline.
    let src = tmp.path().join("evil\x1b[2J\nname.bin");
    write_file(&src, 10_000, 4);
    d.add(&src);
    let mut c = d.cmd();
    c.arg("ls");
    let out = ok(c);
    assert!(!out.contains('\x1b'), "no raw escape reaches the terminal: {out:?}");
    assert!(out.contains("evil\\u{1b}[2J\\nname.bin"), "{out:?}");
    assert_eq!(out.lines().count(), 1, "one line per content: {out:?}");
}
