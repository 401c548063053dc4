//! TLS bound to node keys.
//!
//! Each node presents a self-signed certificate whose subject public key *is* its ed25519
//! node key. The verifiers ignore names, dates and issuers: they read the ed25519 key from the
//! certificate, turn it into a [`NodeId`], and (for a dialer that knows whom it is calling)
//! refuse any other id. TLS 1.3's CertificateVerify, checked with the same key, proves the
//! peer holds the secret. Both sides authenticate (mutual TLS), so the listener learns the
//! dialer's node id too.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use shoal_core::NodeId;

use crate::Identity;

/// The name dialers put in the TLS ServerName; verifiers ignore it.
pub const SERVER_NAME: &str = "shoal.invalid";

/// The DER prefix of an ed25519 SubjectPublicKeyInfo: SEQUENCE { SEQUENCE { OID 1.3.101.112 },
/// BIT STRING (0 unused bits) } followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// A certificate and its key, made from a node identity.
pub(crate) struct CertifiedKey {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) key: PrivateKeyDer<'static>,
}

/// Makes the self-signed certificate of `identity`.
pub(crate) fn certify(identity: &Identity) -> Result<CertifiedKey, rcgen::Error> {
    // PKCS#8 v1 wrapping of an ed25519 seed (RFC 8410).
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&identity.secret_seed());
    let der = PrivatePkcs8KeyDer::from(pkcs8);
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    let cert = params.self_signed(&key_pair)?;
    Ok(CertifiedKey { cert: cert.der().clone(), key: PrivateKeyDer::Pkcs8(der) })
}

/// Reads the node id from a certificate made by [`certify`]. `None` if the certificate is
/// malformed or its key is not ed25519.
pub fn node_id_of(cert: &[u8]) -> Option<NodeId> {
    let spki = subject_public_key_info(cert)?;
    let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    NodeId::from_public_key_bytes(key.try_into().ok()?).ok()
}

/// One DER element: (tag, whole element, contents, what follows it).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((tag, &input[..header + len], &rest[..len], &rest[len..]))
}

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial,
/// signature, issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }
fn subject_public_key_info(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, _, cert_body, _) = tlv(cert)? else {
        return None;
    };
    let (0x30, _, mut tbs, _) = tlv(cert_body)? else {
        return None;
    };
    if tbs.first() == Some(&0xa0) {
        tbs = tlv(tbs)?.3;
    }
    for _ in 0..5 {
        tbs = tlv(tbs)?.3; // serial, signature, issuer, validity, subject
    }
    let (0x30, spki, _, _) = tlv(tbs)? else {
        return None;
    };
    Some(spki)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad_cert() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
}

fn verify13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature(message, cert, dss, &provider.signature_verification_algorithms)
}

/// Accepts a server certificate holding the expected node key (or any ed25519 key when
/// `expected` is `None`).
#[derive(Debug)]
struct ServerVerifier {
    expected: Option<NodeId>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = node_id_of(end_entity).ok_or_else(bad_cert)?;
        match self.expected {
            Some(want) if want != got => Err(rustls::Error::General(format!(
                "peer presented node id {got}, expected {want}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Requires a client certificate holding some ed25519 key.
#[derive(Debug)]
struct ClientVerifier {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        node_id_of(end_entity).ok_or_else(bad_cert)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The rustls server config of a node: TLS 1.3, mutual authentication, the given ALPNs.
pub(crate) fn server_config(
    key: &CertifiedKey,
    alpns: &[&[u8]],
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(ClientVerifier { provider: provider.clone() });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![key.cert.clone()], key.key.clone_key())?;
    cfg.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// The rustls client config for dialing `expected` (any node if `None`).
pub(crate) fn client_config(
    key: &CertifiedKey,
    expected: Option<NodeId>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(ServerVerifier { expected, provider: provider.clone() });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![key.cert.clone()], key.key.clone_key())?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_the_node_key() {
        let id = Identity::generate();
        let ck = certify(&id).unwrap();
        assert_eq!(node_id_of(&ck.cert), Some(id.node_id()));
        assert_eq!(node_id_of(&ck.cert[..ck.cert.len() - 1]), None);
        assert_eq!(node_id_of(b"\x30\x03\x30\x01"), None);
    }
}
