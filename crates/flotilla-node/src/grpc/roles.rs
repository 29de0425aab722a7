//! Who a TLS peer is: the role and name its certificate gives in a URI subject alternative
//! name — `flotilla://store/ID`, `flotilla://admin/NAME` or `flotilla://client/NAME` — and
//! what each role may call.
//!
//! Owns: reading that name from a certificate the handshake already verified against the
//! CAs (a small DER walk over the subject alternative name extension, every length checked),
//! and the rules: raft frames only from a store certificate, as the store it names; snapshot
//! fetches from a store or admin certificate (a backup); CLI and region administration from a store or admin
//! certificate; the KV data service from any role. Must never: panic or read out of bounds
//! on a malformed certificate (it is then refused), or grant a role a certificate does not
//! name.

use std::fmt;
use std::net::SocketAddr;

use tonic::codegen::http;

/// Scheme and authority prefix of the URI that names a role.
pub const URI_PREFIX: &str = "flotilla://";

/// What a certificate allows its holder to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A store (a process of the cluster): raft traffic, snapshots, administration.
    Store,
    /// An operator or tool: administration and the KV service.
    Admin,
    /// An application: the KV service only.
    Client,
}

impl Role {
    fn parse(text: &str) -> Option<Role> {
        match text {
            "store" => Some(Role::Store),
            "admin" => Some(Role::Admin),
            "client" => Some(Role::Client),
            _ => None,
        }
    }

    /// The role's name in a URI.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Role::Store => "store",
            Role::Admin => "admin",
            Role::Client => "client",
        }
    }
}

/// The role and name a peer's certificate gives (`flotilla://ROLE/NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRole {
    /// The role.
    pub role: Role,
    /// The name: a store's peer id, an admin's or client's free-form name.
    pub name: String,
}

impl fmt::Display for PeerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{URI_PREFIX}{}/{}", self.role.name(), self.name)
    }
}

/// What a connection's certificate says (`None` in [`ConnectionRole::role`] for plain
/// text: nothing is proven and every call is allowed, as without TLS).
#[derive(Clone, Debug, Default)]
pub struct ConnectionRole {
    /// The role, under TLS; `Err` says why the certificate names none.
    pub role: Option<Result<PeerRole, String>>,
}

impl ConnectionRole {
    /// Refuses unless the connection is plain text or its certificate's role is one of
    /// `allowed`; the error says what the certificate is and what `what` needs.
    pub fn require(&self, allowed: &[Role], what: &str) -> Result<Option<&PeerRole>, String> {
        match &self.role {
            None => Ok(None),
            Some(Err(why)) => Err(format!("{what} refused: {why}")),
            Some(Ok(peer)) if allowed.contains(&peer.role) => Ok(Some(peer)),
            Some(Ok(peer)) => {
                let names: Vec<&str> = allowed.iter().map(|r| r.name()).collect();
                Err(format!(
                    "{what} refused: the certificate is {peer}, and {what} needs a {} \
                     certificate",
                    names.join(" or ")
                ))
            }
        }
    }
}

/// What the server knows of the other end of a connection: its address and, under TLS, the
/// role its certificate names. Every request on the connection carries it (tonic puts it in
/// the request's extensions); read it with [`peer_info`].
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    /// The remote socket address.
    pub remote: Option<SocketAddr>,
    /// The local socket address.
    pub local: Option<SocketAddr>,
    /// The certificate's role (plain text: none).
    pub role: ConnectionRole,
}

/// What a request's connection says about its peer (nothing, outside a Flotilla server).
#[must_use]
pub fn peer_info(extensions: &http::Extensions) -> PeerInfo {
    extensions.get::<PeerInfo>().cloned().unwrap_or_default()
}

/// The remote address of a request's connection, as text (`unknown` if none).
#[must_use]
pub fn remote_of(extensions: &http::Extensions) -> String {
    extensions
        .get::<PeerInfo>()
        .and_then(|info| info.remote)
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
}

/// The role a DER certificate names: its one `flotilla://` URI subject alternative name.
/// Refused: none, several, or one that is not `flotilla://store|admin|client/NAME` with a
/// printable name of 1 to 255 bytes.
pub fn role_of(der: &[u8]) -> Result<PeerRole, String> {
    let uris = uri_names(der).ok_or("the certificate is not valid DER")?;
    let ours: Vec<&str> = uris
        .iter()
        .map(String::as_str)
        .filter(|u| u.starts_with(URI_PREFIX))
        .collect();
    let uri = match ours.as_slice() {
        [one] => *one,
        [] => {
            return Err(format!(
                "the certificate names no role (a URI SAN {URI_PREFIX}store/ID, \
                 {URI_PREFIX}admin/NAME or {URI_PREFIX}client/NAME)"
            ))
        }
        _ => return Err("the certificate names several flotilla roles".into()),
    };
    let rest = &uri[URI_PREFIX.len()..];
    let (role, name) = rest
        .split_once('/')
        .ok_or_else(|| format!("{uri}: expected {URI_PREFIX}ROLE/NAME"))?;
    let role = Role::parse(role)
        .ok_or_else(|| format!("{uri}: unknown role {role:?} (store, admin or client)"))?;
    if name.is_empty() || name.len() > 255 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{uri}: the name must be 1 to 255 printable characters"
        ));
    }
    Ok(PeerRole {
        role,
        name: name.to_owned(),
    })
}

/// One DER element: (tag, contents, rest). `None` if truncated or malformed.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..octets] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[octets..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Every element of a sequence's contents.
fn elements(mut input: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (tag, contents, rest) = element(input)?;
        out.push((tag, contents));
        input = rest;
    }
    Some(out)
}

/// OID 2.5.29.17 (subjectAltName), DER contents.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT` in TBSCertificate: the extensions.
const EXTENSIONS: u8 = 0xa3;
/// `[6] IMPLICIT IA5String` in GeneralName: a URI.
const URI_NAME: u8 = 0x86;

/// The URI subject alternative names of a DER certificate; `None` if it cannot be read.
fn uri_names(der: &[u8]) -> Option<Vec<String>> {
    let (tag, certificate, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut uris = Vec::new();
    for (tag, contents) in elements(tbs)? {
        if tag != EXTENSIONS {
            continue;
        }
        let (tag, list, _) = element(contents)?;
        if tag != SEQUENCE {
            return None;
        }
        for (tag, extension) in elements(list)? {
            if tag != SEQUENCE {
                return None;
            }
            let parts = elements(extension)?;
            let Some(&(OID, oid)) = parts.first() else {
                return None;
            };
            if oid != SUBJECT_ALT_NAME {
                continue;
            }
            let value = parts
                .iter()
                .skip(1)
                .find(|(tag, _)| *tag != BOOLEAN)
                .filter(|(tag, _)| *tag == OCTET_STRING)?
                .1;
            let (tag, names, _) = element(value)?;
            if tag != SEQUENCE {
                return None;
            }
            for (tag, name) in elements(names)? {
                if tag == URI_NAME {
                    uris.push(String::from_utf8(name.to_vec()).ok()?);
                }
            }
        }
    }
    Some(uris)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(uris: &[&str]) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().expect("ia5")));
        }
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn the_role_is_read_from_the_uri_subject_alternative_name() {
        let der = certificate(&["flotilla://store/0123456789abcdef"]);
        assert_eq!(
            role_of(&der),
            Ok(PeerRole {
                role: Role::Store,
                name: "0123456789abcdef".into()
            })
        );
        let der = certificate(&["https://example.com/", "flotilla://client/app-1"]);
        assert_eq!(role_of(&der).map(|r| r.role), Ok(Role::Client));
    }

    #[test]
    fn certificates_naming_no_role_several_or_a_bad_one_are_refused() {
        assert!(role_of(&certificate(&[]))
            .unwrap_err()
            .contains("names no role"));
        let two = certificate(&["flotilla://store/a", "flotilla://admin/b"]);
        assert!(role_of(&two).unwrap_err().contains("several"));
        let bad = certificate(&["flotilla://root/x"]);
        assert!(role_of(&bad).unwrap_err().contains("unknown role"));
        let empty = certificate(&["flotilla://store/"]);
        assert!(role_of(&empty).is_err());
    }

    #[test]
    fn truncated_or_garbage_der_is_refused_without_panicking() {
        let der = certificate(&["flotilla://store/abc"]);
        for cut in 0..der.len() {
            let _ = role_of(&der[..cut]);
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = role_of(&flipped);
            flipped[i] ^= 0xff;
        }
        assert!(role_of(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn a_role_is_required_only_under_tls() {
        let plain = ConnectionRole::default();
        assert_eq!(plain.require(&[Role::Store], "raft"), Ok(None));
        let client = ConnectionRole {
            role: Some(Ok(PeerRole {
                role: Role::Client,
                name: "app".into(),
            })),
        };
        let refused = client.require(&[Role::Store, Role::Admin], "a CLI call");
        assert!(refused.unwrap_err().contains("flotilla://client/app"));
    }
}
