//! Password authentication to the upstream (SCRAM-SHA-256, MD5, cleartext;
//! trust needs none), one server request at a time. Never logs a secret.

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;

use super::{Secret, UpstreamConfig, UpstreamError};
use crate::codec::Frame;

/// Password authentication, one server request at a time.
pub(super) struct Auth<'a> {
    config: &'a UpstreamConfig,
    /// The configured password, or the connection's Entra token.
    password: Option<&'a Secret>,
    scram: Option<ScramSha256>,
}

impl<'a> Auth<'a> {
    pub(super) fn new(config: &'a UpstreamConfig, password: Option<&'a Secret>) -> Auth<'a> {
        Auth {
            config,
            password,
            scram: None,
        }
    }

    fn password(&self) -> Result<&str, UpstreamError> {
        self.password
            .map(Secret::expose)
            .ok_or_else(|| UpstreamError::PasswordRequired {
                user: self.config.user.clone(),
            })
    }

    /// Answers one Authentication request; `None` when nothing is to be sent.
    pub(super) fn step(&mut self, frame: &Frame) -> Result<Option<BytesMut>, UpstreamError> {
        let mut body = frame.body.clone();
        if body.len() < 4 {
            return Err(UpstreamError::Protocol("short Authentication message".into()));
        }
        let code = body.get_i32();
        let mut out = BytesMut::new();
        match code {
            0 => return Ok(None),
            3 => frontend::password_message(self.password()?.as_bytes(), &mut out)?,
            5 => {
                if body.len() < 4 {
                    return Err(UpstreamError::Protocol("short MD5 salt".into()));
                }
                let salt = [body[0], body[1], body[2], body[3]];
                let hashed = postgres_protocol::authentication::md5_hash(
                    self.config.user.as_bytes(),
                    self.password()?.as_bytes(),
                    salt,
                );
                frontend::password_message(hashed.as_bytes(), &mut out)?;
            }
            10 => {
                let mut offered = Vec::new();
                while !body.is_empty() {
                    let m = cstr(&mut body)?;
                    if m.is_empty() {
                        break;
                    }
                    offered.push(m);
                }
                if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(UpstreamError::UnsupportedAuth {
                        method: format!("SASL ({})", offered.join(", ")),
                    });
                }
                // No channel binding: TLS to the upstream is not built yet.
                let scram = ScramSha256::new(self.password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out)?;
                self.scram = Some(scram);
            }
            11 => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASL continue without a SASL exchange".into()))?;
                scram
                    .update(&body)
                    .map_err(|e| UpstreamError::Protocol(format!("SCRAM: {e}")))?;
                frontend::sasl_response(scram.message(), &mut out)?;
            }
            12 => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASL final without a SASL exchange".into()))?;
                // Checks the server's signature: a fake upstream is caught here.
                scram
                    .finish(&body)
                    .map_err(|e| UpstreamError::Protocol(format!("SCRAM server signature: {e}")))?;
                return Ok(None);
            }
            2 => {
                return Err(UpstreamError::UnsupportedAuth {
                    method: "Kerberos V5".into(),
                });
            }
            7 | 8 => {
                return Err(UpstreamError::UnsupportedAuth {
                    method: "GSSAPI".into(),
                });
            }
            9 => {
                return Err(UpstreamError::UnsupportedAuth {
                    method: "SSPI".into(),
                });
            }
            other => {
                return Err(UpstreamError::UnsupportedAuth {
                    method: format!("code {other}"),
                });
            }
        }
        Ok(Some(out))
    }
}

pub(super) fn cstr(b: &mut bytes::Bytes) -> Result<String, UpstreamError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| UpstreamError::Protocol("unterminated string".into()))?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Ok(s)
}
