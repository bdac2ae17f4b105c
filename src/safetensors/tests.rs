//! Unit tests of `safetensors`.

use super::*;
use proptest::prelude::*;

/// Assembles a file from header JSON: pads it with spaces to a multiple of
/// 8 like the reference writer, then appends `buffer_len` zero bytes.
fn file_from_json(json: &str, buffer_len: u64) -> Vec<u8> {
    let mut header = json.as_bytes().to_vec();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.resize(out.len() + buffer_len as usize, 0);
    out
}

/// Lays tensors out back to back in the given order and returns the file
/// together with the tensors as `parse` should report them.
fn build(
    tensors: &[(&str, Dtype, &[u64])],
    metadata: &[(&str, &str)],
) -> (Vec<u8>, Vec<TensorInfo>) {
    let mut json = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<_, _> = metadata
            .iter()
            .map(|&(k, v)| (k.into(), v.into()))
            .collect();
        json.insert(METADATA_KEY.into(), m.into());
    }
    let mut infos = Vec::new();
    let mut offset = 0;
    for &(name, dtype, shape) in tensors {
        let len = shape.iter().product::<u64>() * dtype.bits() / 8;
        let entry = serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, offset + len]});
        json.insert(name.into(), entry);
        infos.push(TensorInfo {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            begin: offset,
            end: offset + len,
        });
        offset += len;
    }
    let json = serde_json::Value::Object(json).to_string();
    (file_from_json(&json, offset), infos)
}

fn parse_all(bytes: &[u8]) -> Result<Header, SafetensorsError> {
    parse(bytes, bytes.len() as u64)
}

/// Parses a file holding `json` as header and `buffer_len` data bytes.
fn parse_json(json: &str, buffer_len: u64) -> Result<Header, SafetensorsError> {
    parse_all(&file_from_json(json, buffer_len))
}

#[test]
fn valid_file_round_trips() {
    let (bytes, infos) = build(
        &[
            ("embed", Dtype::BF16, &[4, 3]),
            ("w", Dtype::F32, &[2, 2]),
            ("mask", Dtype::Bool, &[5]),
        ],
        &[("format", "pt"), ("note", "ünïcode")],
    );
    let h = parse_all(&bytes).unwrap();
    assert_eq!(h.tensors, infos);
    assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(h.metadata.get("note").map(String::as_str), Some("ünïcode"));
    assert_eq!(h.header_len % 8, 0);
    assert_eq!(h.data_start(), 8 + h.header_len);
    assert_eq!(h.data_len(), 24 + 16 + 5);
    assert_eq!(h.file_len(), bytes.len() as u64);
    let prefix = bytes.first_chunk::<8>().unwrap();
    assert_eq!(header_len(prefix, bytes.len() as u64), Ok(h.header_len));
    let json = &bytes[8..h.data_start() as usize];
    assert_eq!(parse_header(json, bytes.len() as u64), Ok(h.clone()));
    // A prefix holding just the header is enough.
    assert_eq!(
        parse(&bytes[..h.data_start() as usize], bytes.len() as u64),
        Ok(h)
    );
}

type Read = Result<Header, ReadHeaderError<&'static str>>;

/// `read_header` over `bytes`, and the (offset, length) of each read it made.
fn read_from(bytes: &[u8]) -> (Read, Vec<(u64, usize)>) {
    let mut reads = Vec::new();
    let result = read_header(bytes.len() as u64, |offset, buf| {
        reads.push((offset, buf.len()));
        let at = offset as usize;
        let src = bytes.get(at..at + buf.len()).ok_or("past the end")?;
        buf.copy_from_slice(src);
        Ok(())
    });
    (result, reads)
}

#[test]
fn read_header_reads_only_the_header() {
    let (bytes, infos) = build(&[("w", Dtype::F32, &[1000])], &[]);
    let (result, reads) = read_from(&bytes);
    let h = result.unwrap();
    assert_eq!(h.tensors, infos);
    assert_eq!(reads, [(0, 8), (8, h.header_len as usize)]);
    // A length beyond the file is refused before the JSON is read or allocated.
    let (result, reads) = read_from(&bytes[..20]);
    assert!(matches!(
        result,
        Err(ReadHeaderError::Invalid(E::HeaderBeyondFile { .. }))
    ));
    assert_eq!(reads, [(0, 8)]);
    assert!(matches!(
        read_from(&[1, 2, 3]).0,
        Err(ReadHeaderError::Invalid(E::FileTooShort { file_len: 3 }))
    ));
    // The reader's own failure comes back as it is.
    let failing = read_header(100, |_, _| Err("EIO"));
    assert!(matches!(failing, Err(ReadHeaderError::Read("EIO"))));
}

#[test]
fn tensors_are_sorted_by_offset_whatever_the_key_order() {
    let json = r#"{"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},
                       "a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
    let h = parse_json(json, 4).unwrap();
    let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn whitespace_around_the_object_is_accepted() {
    let json = " \n\t\r{\"x\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[0,1]}}\n  \t ";
    assert_eq!(parse_json(json, 1).unwrap().tensors.len(), 1);
}

#[test]
fn unknown_fields_and_null_metadata_are_ignored() {
    let json = r#"{"__metadata__":null,"x":{"dtype":"I8","shape":[1],"data_offsets":[0,1],"extra":{"a":[1,{}]}}}"#;
    let h = parse_json(json, 1).unwrap();
    assert!(h.metadata.is_empty());
    assert_eq!(h.tensors[0].shape, [1]);
}

#[test]
fn empty_header_object_means_empty_buffer() {
    let h = parse_json("{}", 0).unwrap();
    assert!(h.tensors.is_empty());
    assert_eq!(h.data_len(), 0);
    assert_eq!(h.file_len(), 16);
}

#[test]
fn scalar_and_zero_size_tensors() {
    let (bytes, infos) = build(
        &[
            ("empty", Dtype::F32, &[0, 7]),
            ("scalar", Dtype::F64, &[]),
            ("also_empty", Dtype::F4, &[3, 0]),
        ],
        &[],
    );
    let h = parse_all(&bytes).unwrap();
    assert_eq!(h.data_len(), 8);
    let find = |n: &str| h.tensors.iter().find(|t| t.name == n).unwrap();
    assert_eq!(find("scalar"), &infos[1]);
    assert_eq!(find("empty").len(), 0);
    assert_eq!(find("empty").begin, 0);
    assert_eq!(find("also_empty").len(), 0);
    assert_eq!(find("also_empty").begin, 8);
    assert_eq!(find("scalar").len(), 8);
}

#[test]
fn every_dtype_has_its_size() {
    let expected = [
        ("BOOL", 8),
        ("F4", 4),
        ("F6_E2M3", 6),
        ("F6_E3M2", 6),
        ("U8", 8),
        ("I8", 8),
        ("F8_E5M2", 8),
        ("F8_E4M3", 8),
        ("F8_E8M0", 8),
        ("F8_E4M3FNUZ", 8),
        ("F8_E5M2FNUZ", 8),
        ("I16", 16),
        ("U16", 16),
        ("F16", 16),
        ("BF16", 16),
        ("I32", 32),
        ("U32", 32),
        ("F32", 32),
        ("C64", 64),
        ("F64", 64),
        ("I64", 64),
        ("U64", 64),
    ];
    assert_eq!(expected.len(), Dtype::ALL.len());
    for (name, bits) in expected {
        let dtype = Dtype::parse(name).unwrap();
        assert_eq!((dtype.name(), dtype.bits()), (name, bits));
        // Eight elements take exactly `bits` bytes.
        let (bytes, _) = build(&[("t", dtype, &[2, 4])], &[]);
        assert_eq!(parse_all(&bytes).unwrap().tensors[0].len(), bits, "{name}");
    }
    assert_eq!(Dtype::parse("f32"), None);
    assert_eq!(Dtype::parse("F8_E4M3FN"), None);
}

#[test]
fn tensor_at_file_offset_boundaries() {
    let (bytes, _) = build(
        &[
            ("a", Dtype::U8, &[4]),
            ("z", Dtype::F32, &[0]),
            ("b", Dtype::U16, &[2]),
        ],
        &[],
    );
    let h = parse_all(&bytes).unwrap();
    let s = h.data_start();
    let at = |off| h.tensor_at_file_offset(off).map(|t| t.name.as_str());
    assert_eq!(at(0), None);
    assert_eq!(at(s - 1), None);
    assert_eq!(at(s), Some("a"));
    assert_eq!(at(s + 3), Some("a"));
    // The zero-size "z" sits at s + 4 but holds no byte.
    assert_eq!(at(s + 4), Some("b"));
    assert_eq!(at(s + 7), Some("b"));
    assert_eq!(at(s + 8), None);
    assert_eq!(at(u64::MAX), None);
    let empty = parse_json("{}", 0).unwrap();
    assert_eq!(empty.tensor_at_file_offset(empty.data_start()), None);
}

#[test]
fn header_length_limits() {
    let over = (MAX_HEADER_LEN + 1).to_le_bytes();
    assert_eq!(
        header_len(&over, u64::MAX),
        Err(E::HeaderTooLarge {
            header_len: MAX_HEADER_LEN + 1
        })
    );
    assert_eq!(
        header_len(&u64::MAX.to_le_bytes(), u64::MAX),
        Err(E::HeaderTooLarge {
            header_len: u64::MAX
        })
    );
    assert_eq!(
        header_len(&4000u64.to_le_bytes(), 12),
        Err(E::HeaderBeyondFile {
            header_len: 4000,
            file_len: 12
        })
    );
    assert_eq!(header_len(&4000u64.to_le_bytes(), 4008), Ok(4000));
    assert_eq!(parse(&[0; 5], 5), Err(E::FileTooShort { file_len: 5 }));
    assert_eq!(
        parse(&[0; 5], 100),
        Err(E::PrefixTooShort {
            given: 5,
            needed: 8
        })
    );
    let mut short = 16u64.to_le_bytes().to_vec();
    short.extend_from_slice(b"{}  ");
    assert_eq!(
        parse(&short, 24),
        Err(E::PrefixTooShort {
            given: 12,
            needed: 24
        })
    );
    let huge = vec![b' '; MAX_HEADER_LEN as usize + 1];
    assert_eq!(
        parse_header(&huge, u64::MAX),
        Err(E::HeaderTooLarge {
            header_len: MAX_HEADER_LEN + 1
        })
    );
    assert_eq!(
        parse_header(b"{}", 9),
        Err(E::HeaderBeyondFile {
            header_len: 2,
            file_len: 9
        })
    );
}

#[test]
fn rejects_malformed_text() {
    let mut bytes = file_from_json("{\"\u{e9}\":1}", 0);
    bytes[10] = 0xff;
    assert_eq!(parse_all(&bytes), Err(E::InvalidUtf8));
    assert!(matches!(parse_json("{\"a\":", 0), Err(E::InvalidJson(_))));
    assert!(matches!(parse_json("{} {}", 0), Err(E::InvalidJson(_))));
    assert!(matches!(parse_json("{}\0", 0), Err(E::InvalidJson(_))));
    for not_object in [
        "[1, 2]",
        "\"x\"",
        "12",
        "null",
        "",
        "   ",
        "\u{feff}{}",
        "\x0c{}",
    ] {
        assert_eq!(
            parse_json(not_object, 0),
            Err(E::NotAnObject),
            "{not_object:?}"
        );
    }
}

#[test]
fn rejects_duplicate_keys() {
    let t = r#"{"dtype":"U8","shape":[1],"data_offsets":[0,1]}"#;
    assert_eq!(
        parse_json(&format!(r#"{{"w":{t},"w":{t}}}"#), 1),
        Err(E::DuplicateKey("w".into()))
    );
    let json = r#"{"__metadata__":{"k":"a","k":"b"}}"#;
    assert_eq!(
        parse_json(json, 0),
        Err(E::DuplicateMetadataKey("k".into()))
    );
    let json = r#"{"__metadata__":null,"__metadata__":{}}"#;
    assert_eq!(
        parse_json(json, 0),
        Err(E::DuplicateKey(METADATA_KEY.into()))
    );
    // Fields inside an entry may not repeat either (serde's own check).
    let json = r#"{"w":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
    assert!(matches!(parse_json(json, 1), Err(E::InvalidTensorEntry { name, .. }) if name == "w"));
}

#[test]
fn rejects_bad_metadata() {
    for metadata in [
        r#"{"k":1}"#,
        r#"{"k":null}"#,
        r#"["k"]"#,
        r#""k""#,
        r#"{"k":{"a":"b"}}"#,
    ] {
        let json = format!(r#"{{"__metadata__":{metadata}}}"#);
        assert!(
            matches!(parse_json(&json, 0), Err(E::MetadataNotStrings(_))),
            "{metadata}"
        );
    }
    assert!(matches!(
        parse_json(r#"{"__metadata__":{"k":"v"#, 0),
        Err(E::InvalidJson(_))
    ));
}

#[test]
fn rejects_malformed_tensor_entries() {
    let cases = [
        r#"{"dtype":"U8","shape":[1]}"#,
        r#"{"shape":[1],"data_offsets":[0,1]}"#,
        r#"{"dtype":"U8","data_offsets":[0,1]}"#,
        r#"{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}"#,
        r#"{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}"#,
        r#"{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}"#,
        r#"{"dtype":"U8","shape":[1],"data_offsets":[0]}"#,
        r#"{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551616]}"#,
        r#"{"dtype":8,"shape":[1],"data_offsets":[0,1]}"#,
        r#""U8""#,
        r#"null"#,
    ];
    for entry in cases {
        let got = parse_json(&format!(r#"{{"w":{entry}}}"#), 1);
        assert!(
            matches!(&got, Err(E::InvalidTensorEntry { name, .. }) if name == "w"),
            "{entry}: {got:?}"
        );
    }
    let err = parse_json(r#"{"w":{"dtype":"U8","shape":[1]}}"#, 1).unwrap_err();
    assert!(
        err.to_string().contains("missing field `data_offsets`"),
        "{err}"
    );
}

#[test]
fn rejects_unknown_dtype() {
    let json = r#"{"w":{"dtype":"F12","shape":[1],"data_offsets":[0,2]}}"#;
    let err = parse_json(json, 2).unwrap_err();
    assert_eq!(
        err,
        E::UnknownDtype {
            name: "w".into(),
            dtype: "F12".into()
        }
    );
    assert_eq!(err.to_string(), r#"tensor "w": unknown dtype "F12""#);
}

#[test]
fn rejects_layout_errors() {
    let t = |name: &str, dtype: &str, shape: &str, b: u64, e: u64| {
        format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{b},{e}]}}"#)
    };
    let case = |entries: &[String], buffer_len| {
        parse_json(&format!("{{{}}}", entries.join(",")), buffer_len)
    };

    let err = case(&[t("w", "F32", "[2,3]", 0, 20)], 20).unwrap_err();
    assert_eq!(
        err,
        E::SizeMismatch {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![2, 3],
            expected: 24,
            actual: 20
        }
    );
    assert_eq!(
        err.to_string(),
        r#"tensor "w": shape [2, 3] × F32 is 24 bytes but data_offsets span 20"#
    );

    let err = case(
        &[t("a", "U8", "[8]", 0, 8), t("b", "U8", "[2]", 10, 12)],
        12,
    )
    .unwrap_err();
    assert_eq!(
        err,
        E::Gap {
            name: "b".into(),
            begin: 10,
            expected: 8
        }
    );
    assert!(err.to_string().ends_with("(gap)"));
    assert_eq!(
        case(&[t("a", "U8", "[2]", 2, 4)], 4),
        Err(E::Gap {
            name: "a".into(),
            begin: 2,
            expected: 0
        })
    );

    let err = case(&[t("a", "U8", "[8]", 0, 8), t("b", "U8", "[4]", 6, 10)], 10).unwrap_err();
    assert_eq!(
        err,
        E::Overlap {
            name: "b".into(),
            begin: 6,
            expected: 8
        }
    );
    assert!(err.to_string().ends_with("(overlap)"));

    assert_eq!(
        case(&[t("a", "U8", "[4]", 0, 4), t("b", "U8", "[0]", 4, 2)], 4),
        Err(E::BeginAfterEnd {
            name: "b".into(),
            begin: 4,
            end: 2
        })
    );

    let trailing = case(&[t("a", "U8", "[4]", 0, 4)], 5);
    assert_eq!(
        trailing,
        Err(E::BufferMismatch {
            buffer_len: 5,
            covered: 4
        })
    );
    let short = case(&[t("a", "U8", "[4]", 0, 4)], 3);
    assert_eq!(
        short,
        Err(E::BufferMismatch {
            buffer_len: 3,
            covered: 4
        })
    );
    assert_eq!(
        case(&[], 1),
        Err(E::BufferMismatch {
            buffer_len: 1,
            covered: 0
        })
    );

    let big = u64::MAX;
    let overflow = [
        t("w", "U8", &format!("[{big},2]"), 0, big),
        t("w", "U16", &format!("[{big}]"), 0, big),
        // The reference multiplies left to right, so a later zero does not help.
        t("w", "U8", &format!("[{big},{big},0]"), 0, 0),
    ];
    for entry in overflow {
        assert!(
            matches!(
                case(std::slice::from_ref(&entry), 0),
                Err(E::SizeOverflow { .. })
            ),
            "{entry}"
        );
    }
    // Offsets at the top of u64 must not overflow anything either.
    assert_eq!(
        case(&[t("w", "U8", &format!("[{}]", big / 8), 0, big / 8)], 0),
        Err(E::BufferMismatch {
            buffer_len: 0,
            covered: big / 8
        })
    );
    assert!(matches!(
        case(&[t("w", "U8", "[1]", big, big)], 0),
        Err(E::Gap { .. })
    ));

    let err = case(&[t("w", "F4", "[3]", 0, 2)], 2).unwrap_err();
    assert_eq!(
        err,
        E::NotByteAligned {
            name: "w".into(),
            dtype: Dtype::F4,
            bits: 12
        }
    );
    assert_eq!(
        err.to_string(),
        r#"tensor "w": F4 data of 12 bits does not end on a byte boundary"#
    );
    assert!(matches!(
        case(&[t("w", "F6_E2M3", "[2,3]", 0, 5)], 5),
        Err(E::NotByteAligned { bits: 36, .. })
    ));
    assert!(case(&[t("w", "F6_E3M2", "[4]", 0, 3)], 3).is_ok());
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // serde_json skips ignored fields without recursing.
    let json = format!(r#"{{"w":{{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":{deep}}}}}"#);
    assert!(parse_json(&json, 1).is_ok());
    assert!(matches!(
        parse_json(&format!(r#"{{"__metadata__":{deep}}}"#), 0),
        Err(E::MetadataNotStrings(_))
    ));
    let json = format!(r#"{{"w":{{"dtype":"U8","shape":{deep},"data_offsets":[0,1]}}}}"#);
    assert!(matches!(
        parse_json(&json, 1),
        Err(E::InvalidTensorEntry { .. })
    ));
}

#[test]
fn error_messages_name_the_problem() {
    let cases = [
        (
            E::HeaderTooLarge {
                header_len: 123456789012,
            },
            "header length 123456789012 exceeds the 100000000-byte limit",
        ),
        (E::DuplicateKey("x".into()), r#"duplicate key "x""#),
        (
            E::BufferMismatch {
                buffer_len: 9,
                covered: 8,
            },
            "buffer is 9 bytes but tensors cover 8",
        ),
        (E::InvalidUtf8, "header is not valid UTF-8"),
    ];
    for (err, msg) in cases {
        assert_eq!(err.to_string(), msg);
    }
}

/// A valid tensor list in file order, with names unique by construction.
fn tensors_strategy() -> impl Strategy<Value = Vec<(String, Dtype, Vec<u64>)>> {
    let dtype = proptest::sample::select(Dtype::ALL.to_vec());
    let tensor = (any::<String>(), dtype, prop::collection::vec(0u64..5, 0..4));
    prop::collection::vec(tensor, 0..8).prop_map(|ts| {
        ts.into_iter()
            .enumerate()
            .map(|(i, (name, dtype, mut shape))| {
                if shape.iter().product::<u64>() * dtype.bits() % 8 != 0 {
                    // Four elements end on a byte boundary for every sub-byte dtype.
                    shape.push(4);
                }
                (format!("{name}#{i}"), dtype, shape)
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), extra in 0u64..16) {
        let _ = parse(&bytes, bytes.len() as u64);
        let _ = parse(&bytes, bytes.len() as u64 + extra);
        let _ = parse_header(&bytes, u64::MAX);
    }

    #[test]
    fn arbitrary_json_text_never_panics(text in r#"[ {}\[\]",:0-9a-zA-Z_\-.\\]{0,64}"#, buffer_len in 0u64..64) {
        let _ = parse_json(&text, buffer_len);
    }

    #[test]
    fn corrupted_files_never_panic(
        tensors in tensors_strategy(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let refs: Vec<(&str, Dtype, &[u64])> = tensors.iter().map(|(n, d, s)| (n.as_str(), *d, s.as_slice())).collect();
        let (mut bytes, _) = build(&refs, &[("k", "v")]);
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        let _ = parse_all(&bytes);
    }

    #[test]
    fn valid_headers_parse_back(
        tensors in tensors_strategy().prop_shuffle(),
        metadata in prop::collection::btree_map(any::<String>(), any::<String>(), 0..4),
        padding in "[ \t\r\n]{0,3}",
    ) {
        // Offsets follow the generated order; the JSON lists entries in another.
        let mut offset = 0;
        let mut expected: Vec<TensorInfo> = tensors.iter().map(|(name, dtype, shape)| {
            let len = shape.iter().product::<u64>() * dtype.bits() / 8;
            offset += len;
            TensorInfo { name: name.clone(), dtype: *dtype, shape: shape.clone(), begin: offset - len, end: offset }
        }).collect();
        let mut entries: Vec<String> = expected.iter().rev().map(|t| {
            let entry = serde_json::json!({"data_offsets": [t.begin, t.end], "shape": t.shape, "dtype": t.dtype.name()});
            format!("{}:{entry}", serde_json::to_string(&t.name).unwrap())
        }).collect();
        if !metadata.is_empty() {
            entries.push(format!("{METADATA_KEY:?}:{}", serde_json::to_string(&metadata).unwrap()));
        }
        let json = format!("{padding}{{{}}}{padding}", entries.join(","));
        let h = parse_json(&json, offset).unwrap();
        expected.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
        prop_assert_eq!(h.data_len(), offset);
        prop_assert_eq!(h.tensors, expected);
        prop_assert_eq!(h.metadata, metadata);
    }
}
