//! What a first visit meets: every file the pages ask for is served (the browser's own request for
//! `/favicon.ico` included, so the console shows no 404), and the default connection caps admit a
//! real audience rather than upstream's 256.

mod common;

use std::{
    net::{SocketAddr, TcpStream},
    process::Command,
};

use common::{Client, Closed, Server};

/// `curl` (a client that is not ours): status and content type of `path`.
fn curl(server: &Server, path: &str) -> (String, String) {
    let url = format!("http://{}{path}", server.addr);
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{content_type}", "--max-time", "10", &url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, kind) = text.split_once(' ').unwrap_or((&text, ""));
    (status.to_owned(), kind.to_owned())
}

#[test]
fn the_favicon_and_every_file_the_pages_ask_for_are_served() {
    let server = Server::start("");
    let (status, kind) = curl(&server, "/favicon.ico");
    assert_eq!((status.as_str(), kind.as_str()), ("200", "image/x-icon"));
    let url = format!("http://{}/favicon.ico", server.addr);
    let icon = Command::new("curl").args(["-s", "--max-time", "10", &url]).output().expect("curl").stdout;
    assert!(icon.starts_with(&[0, 0, 1, 0]) && icon.len() > 100, "an ICO file");

    // Local files named by src= and href= in the pages' markup.
    for page in ["/", "/demos/kanban.html", "/demos/markdown.html"] {
        let (status, html) = server.get(page);
        assert_eq!(status, 200, "{page}");
        for attr in ["src=\"", "href=\""] {
            for rest in html.split(attr).skip(1) {
                let target = rest.split('"').next().unwrap();
                // Skip external URLs, anchors, and script text that builds URLs at run time.
                let plain = target.chars().all(|c| c.is_ascii_alphanumeric() || "/._-?=".contains(c));
                if target.starts_with("http") || target.starts_with('#') || target.is_empty() || !plain {
                    continue;
                }
                let path = if target.starts_with('/') {
                    target.to_owned()
                } else {
                    let dir = &page[..=page.rfind('/').unwrap()];
                    format!("{dir}{target}")
                };
                let path = path.split(['?', '#']).next().unwrap().to_owned();
                assert_eq!(curl(&server, &path).0, "200", "{page} asks for {path}");
            }
        }
    }
}

/// A WebSocket client whose connection comes from `source` (any 127.0.0.0/8 address).
fn connect_from(server: &Server, source: [u8; 4]) -> Result<Client, Closed> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut ws = Client::handshake(&server.url(), &[], stream).expect("upgrade");
    match ws.read().expect("first frame") {
        tungstenite::Message::Text(hello) => {
            let hello: serde_json::Value = serde_json::from_str(&hello).unwrap();
            let snapshot = common::recv_json(&mut ws);
            Ok(Client { ws, hello, snapshot })
        }
        tungstenite::Message::Close(Some(frame)) => Err(Closed::Frame(frame.code.into(), frame.reason.to_string())),
        other => panic!("unexpected first frame {other:?}"),
    }
}

#[test]
fn the_default_caps_admit_more_than_upstreams_256_and_still_cap_one_address() {
    let server = Server::start("");
    let mut open = Vec::new();
    for i in 0..256 {
        open.push(connect_from(&server, [127, 0, 0, 1]).unwrap_or_else(|e| panic!("connection {i}: {e:?}")));
    }
    // The 257th from the same address is refused (max_connections_per_source = 256)...
    let refused = connect_from(&server, [127, 0, 0, 1]).err();
    assert_eq!(refused, Some(Closed::Frame(1013, "server busy".into())));
    // ...while other addresses still get in, past upstream's 256 in total.
    for i in 0..64 {
        open.push(connect_from(&server, [127, 0, 0, 2]).unwrap_or_else(|e| panic!("connection {i} from .2: {e:?}")));
    }
    assert_eq!(server.health("connections"), 320);
    let mut last = open.pop().unwrap();
    open[0].set("everyone", serde_json::json!(true));
    last.recv_set("everyone");
}
