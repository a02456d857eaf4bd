use super::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

fn startup_bytes(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

#[test]
fn startup_message_and_requests_decode() {
    let mut buf = BytesMut::from(&startup_bytes(&[("user", "agent-7"), ("database", "prod")])[..]);
    assert_eq!(
        decode_startup(&mut buf),
        Ok(Some(FeStartup::Startup {
            params: vec![
                ("user".into(), "agent-7".into()),
                ("database".into(), "prod".into())
            ]
        }))
    );
    assert!(buf.is_empty());

    let mut ssl = BytesMut::from(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..]);
    assert_eq!(decode_startup(&mut ssl), Ok(Some(FeStartup::SslRequest)));
    let mut gss = BytesMut::from(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30][..]);
    assert_eq!(decode_startup(&mut gss), Ok(Some(FeStartup::GssEncRequest)));
    let mut cancel = BytesMut::from(
        &[
            0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xfe,
        ][..],
    );
    assert_eq!(
        decode_startup(&mut cancel),
        Ok(Some(FeStartup::CancelRequest {
            process_id: 7,
            secret_key: -2
        }))
    );
}

#[test]
fn incomplete_startup_means_read_more() {
    let full = startup_bytes(&[("user", "u")]);
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(decode_startup(&mut buf), Ok(None), "cut at {cut}");
    }
}

#[test]
fn bad_startup_packets_are_refused() {
    let mut huge = BytesMut::from(&(20_000i32).to_be_bytes()[..]);
    assert_eq!(
        decode_startup(&mut huge),
        Err(CodecError::BadStartupLength { len: 20_000 })
    );
    let mut tiny = BytesMut::from(&[0, 0, 0, 3][..]);
    assert!(matches!(
        decode_startup(&mut tiny),
        Err(CodecError::BadStartupLength { .. })
    ));
    let mut v2 = BytesMut::from(&[0, 0, 0, 8, 0, 2, 0, 0][..]);
    assert_eq!(
        decode_startup(&mut v2),
        Err(CodecError::UnsupportedProtocol { major: 2, minor: 0 })
    );
    // Parameters without their terminator.
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0agent");
    let mut pkt = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    assert!(matches!(
        decode_startup(&mut BytesMut::from(&pkt[..])),
        Err(CodecError::Malformed { .. })
    ));
}

#[test]
fn query_frame_exact_bytes() {
    let bytes: &[u8] = b"Q\0\0\0\x0dSELECT 1\0";
    let mut buf = BytesMut::from(bytes);
    let frame = decode_frame(&mut buf, &Limits::default())
        .expect("valid")
        .expect("complete");
    assert_eq!(frame.to_bytes().as_ref(), bytes, "re-encodes to the exact bytes");
    assert_eq!(
        FeMessage::parse(&frame),
        Ok(FeMessage::Query {
            sql: "SELECT 1".into()
        })
    );
}

#[test]
fn oversized_messages_are_refused_from_their_header() {
    let limits = Limits {
        max_message: 1024,
        max_password: 64,
    };
    let mut q = BytesMut::from(&b"Q\0\0\x10\x00"[..]); // 4096 declared, nothing sent
    assert_eq!(
        decode_frame(&mut q, &limits),
        Err(CodecError::Oversized {
            tag: 'Q',
            len: 4092,
            max: 1024
        })
    );
    let mut p = BytesMut::from(&b"p\0\0\0\x80"[..]);
    assert!(matches!(
        decode_frame(&mut p, &limits),
        Err(CodecError::Oversized {
            tag: 'p',
            max: 64,
            ..
        })
    ));
    let mut neg = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
    assert!(matches!(
        decode_frame(&mut neg, &limits),
        Err(CodecError::BadLength { .. })
    ));
}

#[test]
fn malformed_bodies_are_named() {
    let cases: Vec<(Frame, CodecError)> = vec![
        (
            Frame::new(b'Q', &b"SELECT 1"[..]),
            CodecError::Malformed {
                tag: 'Q',
                what: "query string",
            },
        ),
        (
            Frame::new(b'Q', &b"SELECT 1\0extra"[..]),
            CodecError::Malformed {
                tag: 'Q',
                what: "bytes after the end of the message",
            },
        ),
        (
            Frame::new(b'Q', &b"SELECT \xff\0"[..]),
            CodecError::InvalidUtf8 {
                tag: 'Q',
                what: "query string",
            },
        ),
        (Frame::new(b'Z', &b""[..]), CodecError::UnknownTag { tag: 'Z' }),
        (
            Frame::new(b'D', &b"Xname\0"[..]),
            CodecError::Malformed {
                tag: 'D',
                what: "target kind is neither 'S' nor 'P'",
            },
        ),
        (
            // Bind with one parameter claiming 100 bytes.
            Frame::new(b'B', &b"\0\0\0\0\0\x01\0\0\0\x64ab"[..]),
            CodecError::Malformed {
                tag: 'B',
                what: "parameter length outside the message",
            },
        ),
        (
            // 65535 parameter types announced (counts are unsigned), none sent.
            Frame::new(b'P', &b"s\0SELECT 1\0\xff\xff"[..]),
            CodecError::Malformed {
                tag: 'P',
                what: "parameter type",
            },
        ),
        (
            Frame::new(b'P', &b"s\0SELECT 1\0\x01"[..]),
            CodecError::Malformed {
                tag: 'P',
                what: "parameter type count",
            },
        ),
    ];
    for (frame, want) in cases {
        assert_eq!(FeMessage::parse(&frame), Err(want), "{frame:?}");
    }
}

#[test]
fn backend_messages_encode_exactly() {
    let mut b = BytesMut::new();
    BeMessage::ReadyForQuery(TxStatus::Idle).encode(&mut b);
    BeMessage::AuthenticationCleartextPassword.encode(&mut b);
    BeMessage::BackendKeyData {
        process_id: 1,
        secret_key: 2,
    }
    .encode(&mut b);
    assert_eq!(
        b.as_ref(),
        b"Z\0\0\0\x05IR\0\0\0\x08\0\0\0\x03K\0\0\0\x0c\0\0\0\x01\0\0\0\x02"
    );

    let d = Diagnostic {
        severity: Severity::Error,
        code: "42501",
        message: "refused by policy".into(),
        detail: None,
        hint: Some("ask a reviewer".into()),
    };
    let mut e = BytesMut::new();
    BeMessage::ErrorResponse(&d).encode(&mut e);
    let frame = decode_frame(&mut e, &Limits::default())
        .expect("valid")
        .expect("complete");
    assert_eq!(frame.tag, b'E');
    assert_eq!(
        parse_diagnostic_fields(&frame.body),
        vec![
            (b'S', "ERROR".to_owned()),
            (b'V', "ERROR".to_owned()),
            (b'C', "42501".to_owned()),
            (b'M', "refused by policy".to_owned()),
            (b'H', "ask a reviewer".to_owned()),
        ]
    );
}

#[tokio::test]
async fn frames_arrive_over_a_stream_byte_by_byte() {
    let (mut client, server) = tokio::io::duplex(64);
    let mut wire = startup_bytes(&[("user", "agent")]);
    for m in [
        FeMessage::Query {
            sql: "SELECT 1".into(),
        },
        FeMessage::Sync,
        FeMessage::Terminate,
    ] {
        wire.extend_from_slice(&m.to_frame().to_bytes());
    }
    let writer = tokio::spawn(async move {
        for b in wire {
            client.write_all(&[b]).await.expect("write");
        }
        // Dropping `client` closes the stream.
    });
    let mut reader = FrameReader::new(server, Limits::default());
    assert!(matches!(
        reader.read_startup().await,
        Ok(Some(FeStartup::Startup { .. }))
    ));
    let mut got = Vec::new();
    while let Some(f) = reader.read_frame().await.expect("read") {
        got.push(FeMessage::parse(&f).expect("parse"));
    }
    writer.await.expect("writer");
    assert_eq!(
        got,
        vec![
            FeMessage::Query {
                sql: "SELECT 1".into()
            },
            FeMessage::Sync,
            FeMessage::Terminate
        ]
    );
}

#[tokio::test]
async fn a_stream_cut_mid_message_is_an_error_not_a_hang() {
    let (mut client, server) = tokio::io::duplex(64);
    client.write_all(b"Q\0\0\0\x0dSELE").await.expect("write");
    drop(client);
    let mut reader = FrameReader::new(server, Limits::default());
    assert!(matches!(reader.read_frame().await, Err(ReadError::UnexpectedEof)));
}

fn arb_string() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,40}"
}

fn arb_message() -> impl Strategy<Value = FeMessage> {
    prop_oneof![
        arb_string().prop_map(|sql| FeMessage::Query { sql }),
        (
            arb_string(),
            arb_string(),
            prop::collection::vec(any::<u32>(), 0..5)
        )
            .prop_map(|(name, query, param_types)| FeMessage::Parse {
                name,
                query,
                param_types
            }),
        (
            arb_string(),
            arb_string(),
            prop::collection::vec(prop::option::of(prop::collection::vec(any::<u8>(), 0..20)), 0..5),
            prop::collection::vec(0i16..=1, 0..3)
        )
            .prop_map(|(portal, statement, params, result_formats)| FeMessage::Bind {
                portal,
                statement,
                param_formats: vec![0; params.len()],
                params: params.into_iter().map(|p| p.map(Bytes::from)).collect(),
                result_formats,
            }),
        (prop_oneof![Just(b'S'), Just(b'P')], arb_string())
            .prop_map(|(kind, name)| FeMessage::Describe { kind, name }),
        (prop_oneof![Just(b'S'), Just(b'P')], arb_string())
            .prop_map(|(kind, name)| FeMessage::Close { kind, name }),
        (arb_string(), any::<i32>()).prop_map(|(portal, max_rows)| FeMessage::Execute { portal, max_rows }),
        Just(FeMessage::Sync),
        Just(FeMessage::Flush),
        Just(FeMessage::Terminate),
        Just(FeMessage::CopyDone),
        prop::collection::vec(any::<u8>(), 0..50).prop_map(|d| FeMessage::CopyData(d.into())),
        arb_string().prop_map(|message| FeMessage::CopyFail { message }),
        prop::collection::vec(any::<u8>(), 0..50).prop_map(|d| FeMessage::Password(d.into())),
    ]
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(msgs in prop::collection::vec(arb_message(), 1..8)) {
        let mut wire = BytesMut::new();
        for m in &msgs {
            m.to_frame().encode(&mut wire);
        }
        let mut got = Vec::new();
        while let Some(frame) = decode_frame(&mut wire, &Limits::default()).expect("valid") {
            got.push(FeMessage::parse(&frame).expect("parses"));
        }
        prop_assert!(wire.is_empty());
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode_startup(&mut buf);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = decode_frame(&mut buf, &Limits::default()) {
            let _ = FeMessage::parse(&frame);
        }
        if let Some((&tag, body)) = bytes.split_first() {
            let _ = FeMessage::parse(&Frame::new(tag, body.to_vec()));
        }
    }
}

#[test]
fn counts_are_unsigned_up_to_65535_parameters() {
    // PostgreSQL reads the protocol's 16-bit counts unsigned: a statement
    // may take up to 65535 parameters (pg8000's suite binds 60000).
    let n = 60_000;
    let parse = FeMessage::Parse {
        name: "s".into(),
        query: "SELECT 1".into(),
        param_types: vec![23; n],
    };
    let bind = FeMessage::Bind {
        portal: String::new(),
        statement: "s".into(),
        param_formats: vec![0],
        params: vec![Some(Bytes::from_static(b"1")); n],
        result_formats: vec![],
    };
    for message in [parse, bind] {
        let bytes = message.to_frame().to_bytes();
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = decode_frame(&mut buf, &Limits::default())
            .expect("valid")
            .expect("complete");
        assert_eq!(FeMessage::parse(&frame), Ok(message));
    }
}
