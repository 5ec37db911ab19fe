//! Table-driven tests of the command grammar: real-looking messages, Chinese and English, well-formed and not.

use super::*;

fn grammar() -> Grammar {
    Grammar::new(
        &["帮忙".to_string()],
        &["领图".to_string()],
        &["中秋".to_string(), "赏月".to_string(), "Moon".to_string()],
    )
}

/// What a case expects.
enum Want {
    Is(Command),
    Paint {
        campaign: Option<&'static str>,
        subject: &'static str,
        aspect: Option<(u32, u32)>,
        seed: Option<u64>,
        avoid: &'static [&'static str],
        hd: bool,
    },
    Err(CommandError),
}

fn free(subject: &'static str) -> Want {
    Want::Paint {
        campaign: None,
        subject,
        aspect: None,
        seed: None,
        avoid: &[],
        hd: false,
    }
}

fn campaign(keyword: &'static str, subject: &'static str) -> Want {
    Want::Paint {
        campaign: Some(keyword),
        subject,
        aspect: None,
        seed: None,
        avoid: &[],
        hd: false,
    }
}

fn with(
    want: Want,
    aspect: Option<(u32, u32)>,
    seed: Option<u64>,
    avoid: &'static [&'static str],
    hd: bool,
) -> Want {
    match want {
        Want::Paint {
            campaign, subject, ..
        } => Want::Paint {
            campaign,
            subject,
            aspect,
            seed,
            avoid,
            hd,
        },
        other => other,
    }
}

#[test]
fn real_looking_messages_parse_as_expected() {
    use Command::*;
    let cases: Vec<(&str, Want)> = vec![
        // Commands, in both languages, any width and case, with voice recognition's full stop.
        ("帮助", Want::Is(Help)),
        ("help", Want::Is(Help)),
        ("HELP", Want::Is(Help)),
        ("  Help  ", Want::Is(Help)),
        ("?", Want::Is(Help)),
        ("？", Want::Is(Help)),
        ("", Want::Is(Help)),
        ("   ", Want::Is(Help)),
        ("帮忙", Want::Is(Help)),
        ("帮助。", Want::Is(Help)),
        ("额度", Want::Is(Quota)),
        ("quota", Want::Is(Quota)),
        ("Ｑｕｏｔａ", Want::Is(Quota)),
        ("额度？", Want::Is(Quota)),
        ("进度", Want::Is(Status)),
        ("STATUS", Want::Is(Status)),
        ("进度。", Want::Is(Status)),
        ("取图", Want::Is(Fetch)),
        ("fetch", Want::Is(Fetch)),
        ("取 图", free("取 图")),
        ("领图", Want::Is(Fetch)),
        ("取图！", Want::Is(Fetch)),
        ("重画", Want::Is(Again)),
        ("again", Want::Is(Again)),
        ("Again!", Want::Is(Again)),
        ("\u{200B}取图\u{200B}", Want::Is(Fetch)),
        // Free prompts.
        ("月下的桂花树", free("月下的桂花树")),
        ("a cat on the moon", free("a cat on the moon")),
        ("  a   cat   on  the moon ", free("a cat on the moon")),
        ("嫦娥抱玉兔", free("嫦娥抱玉兔")),
        ("帮助我画一只猫", free("帮助我画一只猫")),
        ("help me paint a cat", free("help me paint a cat")),
        ("猫，坐在月亮上。", free("猫,坐在月亮上.")),
        ("ＡＩ　画一只猫", free("AI 画一只猫")),
        ("月亮\u{200D}和星星", free("月亮和星星")),
        // Campaigns: keyword + subject, glued or spaced, any case.
        ("中秋 嫦娥抱玉兔", campaign("中秋", "嫦娥抱玉兔")),
        ("中秋嫦娥抱玉兔", campaign("中秋", "嫦娥抱玉兔")),
        ("中秋：嫦娥", campaign("中秋", "嫦娥")),
        ("中秋　　月饼 和 灯笼", campaign("中秋", "月饼 和 灯笼")),
        ("赏月 桂花", campaign("赏月", "桂花")),
        ("中秋", campaign("中秋", "")),
        ("moon rabbit", campaign("moon", "rabbit")),
        ("MOON rabbit", campaign("moon", "rabbit")),
        ("Moonlight sonata", free("Moonlight sonata")),
        ("moon:rabbit", campaign("moon", "rabbit")),
        ("我爱中秋", free("我爱中秋")),
        // Options, Chinese.
        (
            "中秋 嫦娥 横版",
            with(campaign("中秋", "嫦娥"), Some((16, 9)), None, &[], false),
        ),
        (
            "竖版 灯笼",
            with(free("灯笼"), Some((9, 16)), None, &[], false),
        ),
        (
            "月饼 方图",
            with(free("月饼"), Some((1, 1)), None, &[], false),
        ),
        (
            "月饼 种子 42",
            with(free("月饼"), None, Some(42), &[], false),
        ),
        (
            "月饼 种子42",
            with(free("月饼"), None, Some(42), &[], false),
        ),
        (
            "月饼 种子：42",
            with(free("月饼"), None, Some(42), &[], false),
        ),
        (
            "月饼 不要 文字",
            with(free("月饼"), None, None, &["文字"], false),
        ),
        (
            "月饼 不要文字",
            with(free("月饼"), None, None, &["文字"], false),
        ),
        (
            "月饼 不要 文字，水印",
            with(free("月饼"), None, None, &["文字", "水印"], false),
        ),
        ("月饼 高清", with(free("月饼"), None, None, &[], true)),
        (
            "中秋 嫦娥 横版 种子 7 不要 文字 高清",
            with(
                campaign("中秋", "嫦娥"),
                Some((16, 9)),
                Some(7),
                &["文字"],
                true,
            ),
        ),
        // Options, English, full-width and em-dash forms.
        (
            "a cat --ar 16:9",
            with(free("a cat"), Some((16, 9)), None, &[], false),
        ),
        (
            "a cat --ar=3:4",
            with(free("a cat"), Some((3, 4)), None, &[], false),
        ),
        (
            "a cat --AR 2x3",
            with(free("a cat"), Some((2, 3)), None, &[], false),
        ),
        (
            "a cat －－ar １６：９",
            with(free("a cat"), Some((16, 9)), None, &[], false),
        ),
        (
            "a cat ——ar 16:9",
            with(free("a cat"), Some((16, 9)), None, &[], false),
        ),
        (
            "a cat --seed 42",
            with(free("a cat"), None, Some(42), &[], false),
        ),
        (
            "--seed 42 a cat",
            with(free("a cat"), None, Some(42), &[], false),
        ),
        (
            "a cat --seed=0",
            with(free("a cat"), None, Some(0), &[], false),
        ),
        (
            "a cat --no text",
            with(free("a cat"), None, None, &["text"], false),
        ),
        (
            "a cat --no text,watermark",
            with(free("a cat"), None, None, &["text", "watermark"], false),
        ),
        ("a cat --hd", with(free("a cat"), None, None, &[], true)),
        (
            "a cat --landscape",
            with(free("a cat"), Some((16, 9)), None, &[], false),
        ),
        (
            "a cat --no text --no blur",
            with(free("a cat"), None, None, &["text", "blur"], false),
        ),
        // Malformed.
        ("横版", Want::Err(CommandError::EmptySubject)),
        ("--seed 1 --hd", Want::Err(CommandError::EmptySubject)),
        (
            "a cat --seed",
            Want::Err(CommandError::MissingValue("种子 / --seed")),
        ),
        (
            "a cat --seed -1",
            Want::Err(CommandError::BadSeed("-1".into())),
        ),
        (
            "a cat --seed abc",
            Want::Err(CommandError::BadSeed("abc".into())),
        ),
        (
            "a cat 种子 9999999999999999999999",
            Want::Err(CommandError::BadSeed("9999999999999999999999".into())),
        ),
        (
            "a cat --seed 4503599627370496",
            Want::Err(CommandError::BadSeed("4503599627370496".into())),
        ),
        (
            "a cat --ar 16",
            Want::Err(CommandError::BadAspect("16".into())),
        ),
        (
            "a cat --ar 0:1",
            Want::Err(CommandError::BadAspect("0:1".into())),
        ),
        (
            "a cat --ar 10:1",
            Want::Err(CommandError::BadAspect("10:1".into())),
        ),
        (
            "a cat --ar 99:99",
            Want::Err(CommandError::BadAspect("99:99".into())),
        ),
        ("a cat --ar", Want::Err(CommandError::MissingValue("--ar"))),
        (
            "a cat 不要",
            Want::Err(CommandError::MissingValue("不要 / --no")),
        ),
        (
            "a cat --style anime",
            Want::Err(CommandError::UnknownOption("--style".into())),
        ),
        (
            "a cat --notext",
            Want::Err(CommandError::UnknownOption("--notext".into())),
        ),
        (
            "a cat --",
            Want::Err(CommandError::UnknownOption("--".into())),
        ),
    ];
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let g = grammar();
    for (text, want) in cases {
        let got = g.parse(text);
        match want {
            Want::Is(command) => assert_eq!(got, Ok(command), "{text:?}"),
            Want::Err(error) => assert_eq!(got, Err(error), "{text:?}"),
            Want::Paint {
                campaign,
                subject,
                aspect,
                seed,
                avoid,
                hd,
            } => assert_eq!(
                got,
                Ok(Command::Paint(PaintRequest {
                    campaign: campaign.map(str::to_string),
                    subject: subject.to_string(),
                    aspect,
                    seed,
                    avoid: avoid.iter().map(|a| a.to_string()).collect(),
                    hd,
                })),
                "{text:?}"
            ),
        }
    }
}

#[test]
fn hostile_text_never_panics() {
    let g = grammar();
    let long = "月".repeat(100_000);
    for text in [
        long.as_str(),
        "--ar ：：：",
        "种子種子种子",
        "\u{0}\u{1}\u{7f}",
        "中秋\u{0301}",
        "İstanbul moon",
        "MOONİ",
        "🌕🐇 --no 🌕",
        "中秋 --seed 1e9",
        "——",
        "- -ar 1:1 cat",
    ] {
        let _ = g.parse(text);
    }
    assert!(g.is_fetch(" 取图。"));
    assert!(!g.is_fetch("取图片"));
}

#[test]
fn sizes_follow_the_aspect_at_about_the_same_area() {
    assert_eq!(sized((512, 512), (1, 1), (1024, 1024)), (512, 512));
    assert_eq!(sized((512, 512), (16, 9), (1024, 1024)), (704, 384));
    assert_eq!(sized((512, 512), (9, 16), (1024, 1024)), (384, 704));
    assert_eq!(sized((512, 512), (3, 4), (1024, 1024)), (448, 576));
    assert_eq!(sized((1024, 1024), (4, 1), (1024, 1024)), (1024, 512));
    assert_eq!(sized((64, 64), (4, 1), (1024, 1024)), (128, 64));
}
