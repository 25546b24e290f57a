//! Provider stream mapping, bytes → events: arbitrary bytes, cut into pieces at arbitrary
//! points (inside lines and UTF-8 characters), through the SSE framing and each vendor's
//! decoder. Must hold: no panic; the stream ends; after an error nothing more is yielded.
#![no_main]

use futures::StreamExt;
use libfuzzer_sys::fuzz_target;

use cairn::providers::http::{SseDecoder, sse_events};
use cairn::providers::{anthropic, gemini, openai};

/// Splits `data` into pieces whose lengths come from its first byte (1..=32, 0 = one piece).
fn pieces(data: &[u8]) -> Vec<Result<Vec<u8>, std::convert::Infallible>> {
    let Some((&step, body)) = data.split_first() else {
        return Vec::new();
    };
    let step = usize::from(step % 33);
    if step == 0 {
        return vec![Ok(body.to_vec())];
    }
    body.chunks(step).map(|c| Ok(c.to_vec())).collect()
}

fn drive<D: SseDecoder>(data: &[u8], decoder: D) {
    let stream = sse_events(
        "fuzz".to_string(),
        futures::stream::iter(pieces(data)),
        decoder,
    );
    let items: Vec<_> = futures::executor::block_on(stream.collect());
    if let Some(first_err) = items.iter().position(Result::is_err) {
        assert_eq!(first_err + 1, items.len(), "events after an error");
    }
}

fuzz_target!(|data: &[u8]| {
    drive(data, openai::ChunkDecoder::new("fuzz"));
    drive(data, anthropic::EventDecoder::new("fuzz", "m", None));
    drive(
        data,
        anthropic::EventDecoder::new("fuzz", "m", Some("answer".to_string())),
    );
    drive(data, gemini::ResponseDecoder::new("fuzz"));
});
