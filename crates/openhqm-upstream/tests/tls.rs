//! TLS to backends: verification is on by default, and `tls.ca_file` adds a
//! trusted root. The backend is a real HTTPS server (Python's `ssl` module)
//! with a certificate made by `openssl` for this test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;
use openhqm_core::FailureKind;
use openhqm_upstream::EndpointConfig;
use serde_json::json;

const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"tls": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Kills the HTTPS server when the test ends, pass or fail.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed by scripts/test.sh");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A test CA (`ca.pem`) and a server certificate for 127.0.0.1 it signed
/// (`cert.pem`, `key.pem`): a self-signed leaf would be refused as a CA
/// used as an end entity, whatever the trust settings.
fn certificates(dir: &Path) {
    let rsa = ["-newkey", "rsa:2048", "-nodes"];
    openssl(
        &[
            &["req", "-x509", "-days", "1", "-subj", "/CN=openhqm test CA"][..],
            &rsa,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
        dir,
    );
    openssl(
        &[
            &["req", "-subj", "/CN=127.0.0.1"][..],
            &rsa,
            &["-keyout", "key.pem", "-out", "leaf.csr"],
        ]
        .concat(),
        dir,
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
        ]
        .into_iter()
        .chain(["-days", "1", "-extfile", "leaf.ext", "-out", "cert.pem"])
        .collect::<Vec<_>>(),
        dir,
    );
}

fn https_server(dir: &Path) -> (Server, String) {
    let mut child = Command::new("python3")
        .args(["-c", HTTPS_SERVER])
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().expect("the server prints its port");
    (Server(child), format!("https://127.0.0.1:{port}/"))
}

#[tokio::test]
async fn certificates_are_verified_ca_file_adds_a_root_and_verification_can_be_skipped() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (_server, url) = https_server(dir.path());

    // An unknown issuer is refused: nothing is sent to a backend we cannot trust.
    let p = processor(&config(EndpointConfig::with_url(&url)));
    let err = call(&p, &envelope("{}", &[])).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Transient, "{}", err.message);
    assert!(err.message.contains("certificate"), "{}", err.message);

    let mut trusted = EndpointConfig::with_url(&url);
    trusted.tls.ca_file = Some(dir.path().join("ca.pem").display().to_string());
    let p = processor(&config(trusted));
    let out = call(&p, &envelope("{}", &[])).await.unwrap();
    assert_eq!(out.status_code, Some(200));
    assert_eq!(out.result, json!({"tls": true}));

    // For test backends only: any certificate is accepted.
    let mut unchecked = EndpointConfig::with_url(&url);
    unchecked.tls.insecure_skip_verify = true;
    let p = processor(&config(unchecked));
    let out = call(&p, &envelope("{}", &[])).await.unwrap();
    assert_eq!(out.status_code, Some(200));
}
