//! Who may open `Attach`, and as which proxy. A stream carries decisions
//! (with reviewers' names and reasons) and kill orders, so it is served
//! only to a client that proves it is the proxy it says it is:
//!
//! * with `control.tls.client_ca`, a client certificate that CA signed
//!   (checked by the TLS handshake) whose common name, or one of whose DNS
//!   subject alternative names, is exactly the proxy id announced in
//!   `Hello`;
//! * with `control.allow_insecure_attach_loopback` (development on one
//!   host, no certificates), a client on a loopback address, trusted for
//!   the id it announces;
//! * with neither, nobody.
//!
//! The stream then carries only what concerns that proxy id (see
//! `attach`), so a proxy learns nothing of the requests and sessions of
//! another.

use std::net::SocketAddr;

use airlock_proto::ErrorCode;
use tonic::Status;

use super::status;

/// How `Attach` authenticates proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachAuth {
    /// A verified client certificate naming the announced proxy id.
    ClientCertificate,
    /// No certificates: loopback clients only, for development.
    InsecureLoopback,
    /// Neither is configured: `Attach` is refused.
    Refused,
}

/// What is known of the client of one `Attach` call.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// The names of its client certificate (common names, DNS subject
    /// alternative names); `None` without a verified certificate.
    pub cert_names: Option<Vec<String>>,
}

impl Peer {
    /// The peer of `request`: its address and, over mutual TLS, the names
    /// of the certificate the handshake verified.
    pub fn of<T>(request: &tonic::Request<T>) -> Peer {
        let cert_names = request
            .peer_certs()
            .and_then(|chain| chain.first().map(|leaf| certificate_names(leaf.as_ref())));
        Peer {
            addr: request.remote_addr(),
            cert_names,
        }
    }

    fn on_loopback(&self) -> bool {
        self.addr.is_some_and(|a| a.ip().to_canonical().is_loopback())
    }

    /// Whether the client may open `Attach` at all (before its `Hello`).
    pub fn admit(&self, auth: AttachAuth) -> Result<(), Status> {
        match auth {
            AttachAuth::ClientCertificate if self.cert_names.is_some() => Ok(()),
            AttachAuth::ClientCertificate => Err(status(
                ErrorCode::Unauthenticated,
                "Attach is for proxies: present a client certificate signed by control.tls.client_ca",
            )),
            AttachAuth::InsecureLoopback if self.on_loopback() => Ok(()),
            AttachAuth::InsecureLoopback => Err(status(
                ErrorCode::Unauthenticated,
                format!(
                    "Attach without a client certificate is served to loopback clients only, not {}",
                    self.addr
                        .map(|a| a.ip().to_string())
                        .unwrap_or_else(|| "an unknown address".into())
                ),
            )),
            AttachAuth::Refused => Err(status(
                ErrorCode::Unauthenticated,
                "Attach needs client certificates (control.tls.client_ca), which this control plane \
                 does not have configured",
            )),
        }
    }

    /// Whether the client may attach as `proxy_id`: its certificate must
    /// name it. Without certificates (loopback development) any id goes.
    pub fn may_be(&self, auth: AttachAuth, proxy_id: &str) -> Result<(), Status> {
        self.admit(auth)?;
        match (&self.cert_names, auth) {
            (Some(names), AttachAuth::ClientCertificate) if names.iter().any(|n| n == proxy_id) => Ok(()),
            (Some(names), AttachAuth::ClientCertificate) => Err(status(
                ErrorCode::Unauthenticated,
                format!(
                    "the client certificate names {}, not proxy {proxy_id}",
                    if names.is_empty() {
                        "nothing".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            )),
            (_, AttachAuth::InsecureLoopback) => Ok(()),
            // `admit` refused these already.
            (None, AttachAuth::ClientCertificate) | (_, AttachAuth::Refused) => {
                Err(status(ErrorCode::Unauthenticated, "Attach refused"))
            }
        }
    }
}

/// The common names and DNS subject alternative names of a DER
/// certificate; none when it cannot be parsed (the handshake accepted it,
/// so that would be a certificate this parser does not understand: it
/// then names no proxy).
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(addr: &str, names: Option<&[&str]>) -> Peer {
        Peer {
            addr: Some(addr.parse().expect("addr")),
            cert_names: names.map(|n| n.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    fn refused(r: Result<(), Status>) -> String {
        let s = r.expect_err("refused");
        assert_eq!(ErrorCode::of(&s), Some(ErrorCode::Unauthenticated), "{s:?}");
        s.message().to_owned()
    }

    #[test]
    fn without_a_certificate_only_loopback_development_attaches() {
        use AttachAuth::*;
        let remote = peer("10.0.0.7:5000", None);
        let local = peer("127.0.0.1:5000", None);
        let mapped = peer("[::ffff:127.0.0.1]:5000", None);
        assert!(refused(remote.admit(ClientCertificate)).contains("client certificate"));
        assert!(refused(local.admit(ClientCertificate)).contains("client certificate"));
        assert!(refused(remote.admit(InsecureLoopback)).contains("loopback clients only, not 10.0.0.7"));
        assert!(local.may_be(InsecureLoopback, "anything").is_ok());
        assert!(mapped.admit(InsecureLoopback).is_ok());
        assert!(peer("[::1]:5000", None).admit(InsecureLoopback).is_ok());
        refused(local.admit(Refused));
        refused(Peer::default().admit(InsecureLoopback));
    }

    #[test]
    fn a_certificate_attaches_only_as_the_proxy_it_names() {
        let p = peer("10.0.0.7:5000", Some(&["proxy-a", "proxy-a.example"]));
        assert!(p.may_be(AttachAuth::ClientCertificate, "proxy-a").is_ok());
        assert!(p.may_be(AttachAuth::ClientCertificate, "proxy-a.example").is_ok());
        let why = refused(p.may_be(AttachAuth::ClientCertificate, "proxy-b"));
        assert!(
            why.contains("names proxy-a, proxy-a.example, not proxy proxy-b"),
            "{why}"
        );
        refused(peer("10.0.0.7:5000", Some(&[])).may_be(AttachAuth::ClientCertificate, ""));
    }

    #[test]
    fn names_are_read_from_the_common_name_and_dns_alternative_names() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["proxy-a.example".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "proxy-a");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            certificate_names(cert.der()),
            vec!["proxy-a".to_owned(), "proxy-a.example".to_owned()]
        );
        assert!(certificate_names(b"not a certificate").is_empty());
    }
}
