//! Decoding untrusted bytes: `codec::decode` and the `FrameCodec` decoder must answer `Ok` or
//! `Err` for any input, never panic; truncated frames mean "need more data"; an oversize length
//! prefix is refused before anything of that size is allocated; a frame holds exactly one
//! message; and encoding refuses (without touching the buffer) a message larger than the frame cap.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use shardq_protocol::codec::{decode, encode};
use shardq_protocol::*;
use tokio_util::codec::{Decoder, Encoder};

fn sample_produce(values: usize, value_len: usize) -> RequestEnvelope {
    let mut b = BatchBuilder::default();
    for i in 0..values {
        b.push(
            Some(format!("k{i}").as_bytes()),
            &vec![i as u8; value_len],
            i as u64,
        );
    }
    RequestEnvelope {
        correlation_id: 17,
        request: Request::Produce(ProduceRequest {
            shard: ShardId::new("orders", 2),
            epoch: 5,
            producer: Some(ProducerSeq {
                producer_id: 9,
                sequence: 3,
            }),
            acks: Acks::Durable,
            batch: b.finish(),
        }),
    }
}

fn sample_fetched() -> ResponseEnvelope {
    let mut b = BatchBuilder::default();
    b.push(None, b"hello", 1);
    b.push(Some(b"k"), b"world", 2);
    ResponseEnvelope {
        correlation_id: 99,
        result: Ok(Response::Fetched {
            high_watermark: 12,
            start_offset: 0,
            incarnation: 7,
            stable_end: 10,
            batches: vec![StoredBatch {
                base_offset: 10,
                leader_epoch: 0,
                producer: None,
                batch: b.finish(),
            }],
        }),
    }
}

/// A complete frame (length prefix + body) for `value`.
fn frame<T: serde::Serialize>(value: &T) -> BytesMut {
    let mut buf = BytesMut::new();
    FrameCodec::<()>::new(DEFAULT_MAX_FRAME)
        .encode(value, &mut buf)
        .expect("encode frame");
    buf
}

/// Feeds `input` to a fresh decoder in chunks of the given sizes (cycled), collecting messages
/// until the input is used up or the decoder errors. Never panics unless the decoder does.
fn feed_in_chunks<D: serde::de::DeserializeOwned>(
    max_frame: usize,
    input: &[u8],
    chunks: &[usize],
) -> (Vec<D>, Option<std::io::Error>) {
    let mut codec = FrameCodec::<D>::new(max_frame);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < input.len() {
        let n = chunks[i % chunks.len()].max(1).min(input.len() - pos);
        i += 1;
        buf.extend_from_slice(&input[pos..pos + n]);
        pos += n;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn decode_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<RequestEnvelope>(&bytes);
        let _ = decode::<ResponseEnvelope>(&bytes);
    }

    #[test]
    fn decode_mutated_messages_never_panics(
        which in 0usize..2,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        // Random bytes rarely get past the first tag; mutating valid messages reaches deep fields.
        let mut bytes = if which == 0 {
            encode(&sample_produce(3, 20)).expect("encode")
        } else {
            encode(&sample_fetched()).expect("encode")
        };
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        let cut = cut.index(bytes.len() + 1);
        for slice in [&bytes[..], &bytes[..cut]] {
            if let Ok(env) = decode::<RequestEnvelope>(slice) {
                // A message that decodes must also be safe to walk.
                if let Request::Produce(p) = &env.request {
                    let _ = p.batch.validate(1 << 20);
                    let _ = p.batch.iter().count();
                }
            }
            if let Ok(ResponseEnvelope { result: Ok(Response::Fetched { batches, .. }), .. }) =
                decode::<ResponseEnvelope>(slice)
            {
                for b in &batches {
                    let _ = b.batch.iter().count();
                }
            }
        }
    }

    #[test]
    fn frame_decoder_on_arbitrary_bytes_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        chunks in proptest::collection::vec(1usize..64, 1..8),
        max_frame in 0usize..2048,
    ) {
        let _ = feed_in_chunks::<RequestEnvelope>(max_frame, &bytes, &chunks);
        let _ = feed_in_chunks::<ResponseEnvelope>(max_frame, &bytes, &chunks);
    }

    #[test]
    fn frame_decoder_on_random_bodies_never_panics(
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        // A well-formed length prefix around garbage: exercises the bincode path behind it.
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.extend_from_slice(&body);
        let mut codec = FrameCodec::<RequestEnvelope>::new(DEFAULT_MAX_FRAME);
        match codec.decode(&mut buf) {
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => return Err(TestCaseError::fail("a complete frame was reported as incomplete")),
        }
    }

    #[test]
    fn frames_split_anywhere_decode_in_order(
        n in 1usize..6,
        chunks in proptest::collection::vec(1usize..40, 1..6),
    ) {
        let msgs: Vec<RequestEnvelope> = (0..n)
            .map(|i| {
                let mut m = sample_produce(i + 1, 10 * i);
                m.correlation_id = i as u64;
                m
            })
            .collect();
        let mut input = Vec::new();
        for m in &msgs {
            input.extend_from_slice(&frame(m));
        }
        let (got, err) = feed_in_chunks::<RequestEnvelope>(DEFAULT_MAX_FRAME, &input, &chunks);
        prop_assert!(err.is_none(), "valid frames refused: {:?}", err);
        prop_assert_eq!(got, msgs);
    }
}

#[test]
fn truncated_frame_needs_more_data_then_decodes() {
    let msg = sample_produce(4, 33);
    let full = frame(&msg);
    // Every proper prefix, on a fresh decoder: not an error, not a message, input kept.
    for cut in 0..full.len() {
        let mut codec = FrameCodec::<RequestEnvelope>::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::from(&full[..cut]);
        match codec.decode(&mut buf) {
            Ok(None) => {}
            other => panic!("prefix of {cut}/{} bytes gave {other:?}", full.len()),
        }
        // Completing the same buffer on the same decoder yields the message.
        buf.extend_from_slice(&full[cut..]);
        let got = codec
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("completed frame (cut at {cut}) refused: {e}"));
        assert_eq!(got.as_ref(), Some(&msg), "cut at {cut}");
        assert!(buf.is_empty());
    }

    // And byte by byte on one decoder.
    let mut codec = FrameCodec::<RequestEnvelope>::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    for (i, b) in full.iter().enumerate() {
        buf.put_u8(*b);
        let r = codec.decode(&mut buf).expect("no error on a valid frame");
        if i + 1 < full.len() {
            assert!(r.is_none(), "message before its last byte ({i})");
        } else {
            assert_eq!(r, Some(msg.clone()));
        }
    }
    // Nothing left: the decoder asks for more rather than inventing a message.
    assert!(codec.decode(&mut buf).expect("empty buffer").is_none());
}

#[test]
fn oversize_length_prefix_is_refused_without_allocating() {
    for max_frame in [1024usize, DEFAULT_MAX_FRAME] {
        for claimed in [max_frame as u32 + 1, u32::MAX] {
            let mut codec = FrameCodec::<RequestEnvelope>::new(max_frame);
            let mut buf = BytesMut::with_capacity(16);
            buf.put_u32(claimed);
            buf.extend_from_slice(b"abcd");
            let err = codec
                .decode(&mut buf)
                .expect_err("a length prefix above max_frame must be refused");
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
            assert!(
                buf.capacity() < 1024,
                "decoder reserved {} bytes for a refused {claimed}-byte frame",
                buf.capacity()
            );
        }
    }
    // Exactly max_frame is allowed: the decoder waits for the body rather than refusing.
    let mut codec = FrameCodec::<RequestEnvelope>::new(1024);
    let mut buf = BytesMut::new();
    buf.put_u32(1024);
    assert!(codec.decode(&mut buf).expect("at the limit").is_none());
}

#[test]
fn frame_limit_is_the_same_for_encoder_and_decoder() {
    let msg = sample_produce(5, 50);
    let body_len = encode(&msg).expect("encode").len();

    // At exactly the limit: encodes and decodes.
    let mut codec = FrameCodec::<RequestEnvelope>::new(body_len);
    let mut buf = BytesMut::new();
    codec
        .encode(&msg, &mut buf)
        .expect("body of exactly max_frame bytes");
    let wire = buf.clone();
    assert_eq!(codec.decode(&mut buf).expect("decode"), Some(msg.clone()));

    // One byte below: the encoder refuses, and so does a decoder with that limit.
    let mut small = FrameCodec::<RequestEnvelope>::new(body_len - 1);
    let mut out = BytesMut::from(&b"keep"[..]);
    let err = small
        .encode(&msg, &mut out)
        .expect_err("too large to encode");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains(&body_len.to_string()), "{err}");
    assert_eq!(
        &out[..],
        b"keep",
        "a refused encode must leave the buffer as it was"
    );
    let mut wire = wire;
    assert!(small.decode(&mut wire).is_err());
}

#[test]
fn encoding_too_large_a_message_leaves_the_buffer_unchanged() {
    let msg = sample_produce(100, 2_000); // ~200 KB
    let mut codec = FrameCodec::<RequestEnvelope>::new(64 * 1024);
    let before = frame(&sample_fetched());
    let mut buf = before.clone();
    assert!(codec.encode(&msg, &mut buf).is_err());
    assert_eq!(buf, before);
    // The codec and buffer are still usable: the earlier frame decodes, a small one encodes.
    let mut resp = FrameCodec::<ResponseEnvelope>::new(64 * 1024);
    assert_eq!(
        resp.decode(&mut buf).expect("decode"),
        Some(sample_fetched())
    );
    let small = sample_produce(1, 10);
    codec.encode(&small, &mut buf).expect("small message");
    assert_eq!(codec.decode(&mut buf).expect("decode"), Some(small));
}

#[test]
fn trailing_bytes_in_a_frame_are_an_error() {
    let msg = sample_produce(2, 8);
    let mut body = encode(&msg).expect("encode");
    assert_eq!(decode::<RequestEnvelope>(&body).expect("exact"), msg);
    body.push(0);
    let err = decode::<RequestEnvelope>(&body).expect_err("trailing byte accepted");
    assert!(err.contains("trailing"), "{err}");

    // Same through the frame decoder: the length covers the message plus one stray byte.
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.extend_from_slice(&body);
    let mut codec = FrameCodec::<RequestEnvelope>::new(DEFAULT_MAX_FRAME);
    let err = codec
        .decode(&mut buf)
        .expect_err("trailing byte accepted in a frame");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn huge_length_inside_a_small_frame_is_refused() {
    // A 30-byte frame whose topic-name length claims ~1 GB: must be an error, not a crash.
    let msg = RequestEnvelope {
        correlation_id: 1,
        request: Request::DescribeTopic { name: "x".into() },
    };
    let mut body = encode(&msg).expect("encode");
    // Layout: varint correlation id (1), variant tag, varint string length (1), "x".
    assert_eq!(body.len(), 4);
    assert_eq!((body[0], body[2], body[3]), (1, 1, b'x'));
    body.truncate(2);
    body.push(252); // varint marker: u32 follows
    body.extend_from_slice(&(1u32 << 29).to_le_bytes());
    body.extend_from_slice(b"short");
    assert!(decode::<RequestEnvelope>(&body).is_err());
    body[2] = 253; // u64 length
    body.truncate(3);
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(decode::<RequestEnvelope>(&body).is_err());
}

#[test]
fn truncated_messages_are_errors() {
    let req = encode(&sample_produce(3, 7)).expect("encode");
    for cut in 0..req.len() {
        assert!(
            decode::<RequestEnvelope>(&req[..cut]).is_err(),
            "a {cut}/{}-byte prefix of a request decoded",
            req.len()
        );
    }
    let resp = encode(&sample_fetched()).expect("encode");
    for cut in 0..resp.len() {
        assert!(
            decode::<ResponseEnvelope>(&resp[..cut]).is_err(),
            "a {cut}/{}-byte prefix of a response decoded",
            resp.len()
        );
    }
}
