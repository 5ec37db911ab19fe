//! What followers send, understood; what they receive, checked — end to end on PostgreSQL and SQLite, with the real
//! engine, the small translation model and the WeChat API stand-in: a Chinese prompt outside any campaign is painted
//! from its English (stored on the job, shown by 进度); a photo in a photo campaign comes back as a painting of it;
//! oversize, bomb and unreadable photos are refused politely with nothing painted; a picture the safety checker
//! flags is not delivered and the follower is told.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use huabi::campaign::{self, PhotoMode};
use huabi::standin::{StandIn, StandInOptions};
use huabi::store::admin::{JobDetail, JobFilter};

use crate::campaigns::shifted;
use crate::delivery::{delivering, spawn_delivering, start_standin, wait_for};
use crate::helpers::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A plaintext image message naming temporary media `media_id`.
fn image_xml(user: &str, msg_id: u64, media_id: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[http://mmbiz.qpic.cn/x.jpg]]></PicUrl><MediaId><![CDATA[{media_id}]]></MediaId><MsgId>{msg_id}</MsgId></xml>"
    )
}

fn content(body: &str) -> String {
    huabi::channel::wechat::xml::parse(body.as_bytes())
        .expect("xml")
        .get("Content")
        .unwrap_or_default()
        .to_string()
}

/// The follower's only job once it has ended (delivered or failed).
pub async fn ended_job(app: &TestApp, user: &str) -> JobDetail {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = app
            .store
            .jobs(&JobFilter {
                user_id: Some(user.into()),
                limit: 10,
                ..JobFilter::default()
            })
            .await
            .expect("jobs");
        if let [job] = jobs.as_slice()
            && matches!(job.status.as_str(), "delivered" | "failed")
            && (job.status == "failed" || job.delivered_at.is_some())
        {
            return job.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{user}: job never ended: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Text messages the stand-in sent to `user`.
fn texts_to(stand_in: &StandIn, user: &str) -> Vec<String> {
    stand_in
        .record()
        .sends
        .iter()
        .filter(|s| s.touser == user && s.msgtype == "text")
        .filter_map(|s| s.text.clone())
        .collect()
}

/// A PNG of `width` × `height` with a gradient, or noise (which compresses badly).
pub fn png(width: u32, height: u32, noise: bool) -> Vec<u8> {
    let mut seed = 7u32;
    let picture = image::RgbImage::from_fn(width, height, |x, y| {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        if noise {
            image::Rgb([(seed >> 24) as u8, (seed >> 16) as u8, (seed >> 8) as u8])
        } else {
            image::Rgb([(x * 3) as u8, (y * 3) as u8, 128])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

/// A PNG whose header says 30000 × 30000 (900 megapixels) in a few hundred bytes: a decompression bomb.
fn bomb() -> Vec<u8> {
    let mut file = png(8, 8, false);
    // IHDR's width and height follow the signature (8 bytes), the chunk length and type (8 bytes).
    file[16..20].copy_from_slice(&30000u32.to_be_bytes());
    file[20..24].copy_from_slice(&30000u32.to_be_bytes());
    let crc = crc32(&file[12..29]);
    file[29..33].copy_from_slice(&crc.to_be_bytes());
    file
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

async fn a_chinese_prompt_is_painted_from_its_english(backend: Backend) {
    let (stand_in, base) = start_standin(StandInOptions::default()).await;
    let mut env = delivering(&base, "0");
    env.push((
        "HUABI__TRANSLATE__MODEL_DIR",
        root()
            .join("models/translate/tiny-zh-en")
            .display()
            .to_string(),
    ));
    let app = spawn_delivering(backend, &env, &[]).await;
    let fixtures: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/translate/cases.json"))
            .expect("cases"),
    )
    .expect("json");
    let case = &fixtures["cases"][0];
    let (source, english) = (
        case["text"].as_str().expect("text"),
        case["translation"].as_str().expect("translation").trim(),
    );
    let (status, body) = app.post_plain(&text_xml("o_zh", 7001, source)).await;
    assert_eq!(status, 200);
    assert!(content(&body).contains("收到"), "{body}");
    let job = ended_job(&app, "o_zh").await;
    assert_eq!(job.status, "delivered");
    assert_eq!(job.prompt, source, "the follower's words are kept");
    assert_eq!(
        job.painted_prompt.as_deref(),
        Some(english),
        "what was painted is stored"
    );
    assert!(job.translate_ms.is_some_and(|ms| ms >= 0.0));
    assert!(job.timeline().contains("translated"), "{}", job.timeline());
    wait_for(&stand_in, 30, "the picture", |r| {
        r.sends
            .iter()
            .any(|s| s.touser == "o_zh" && s.msgtype == "image")
    })
    .await;
    let (_, body) = app.post_plain(&text_xml("o_zh", 7002, "进度")).await;
    assert!(
        content(&body).contains(english),
        "进度 shows the English: {body}"
    );

    // English stays as it is, and the model's cache answers a repeated stretch.
    app.post_plain(&text_xml("o_en", 7003, "a lantern on the river"))
        .await;
    let job = ended_job(&app, "o_en").await;
    assert_eq!(job.painted_prompt, None);
}

async fn a_model_that_reads_chinese_gets_the_words_as_written(backend: Backend) {
    let (stand_in, base) = start_standin(StandInOptions::default()).await;
    let models = crate::engine::chinese_model();
    let model_dir = models.path().join("tiny-sd-zh").display().to_string();
    let mut env = delivering(&base, "0");
    env.push((
        "HUABI__TRANSLATE__MODEL_DIR",
        root()
            .join("models/translate/tiny-zh-en")
            .display()
            .to_string(),
    ));
    let app = spawn_delivering(backend, &env, &[("HUABI__ENGINE__MODEL_DIR", &model_dir)]).await;
    app.post_plain(&text_xml("o_bert", 7101, "月下的桂花树"))
        .await;
    let job = ended_job(&app, "o_bert").await;
    assert_eq!(job.status, "delivered", "{:?}", job.error);
    assert_eq!(
        job.painted_prompt, None,
        "its encoder reads Chinese: nothing translated"
    );
    assert_eq!(job.translate_ms, None);
    wait_for(&stand_in, 30, "the picture", |r| {
        r.sends
            .iter()
            .any(|s| s.touser == "o_bert" && s.msgtype == "image")
    })
    .await;
}

/// The shipped campaign, running now, painting photos at 64×64 with strength 0.6.
pub fn photo_campaign() -> campaign::Campaign {
    let mut c = shifted("photos", "中秋", -1, 1);
    c.photo = Some(PhotoMode {
        strength: 0.6,
        template: "a Mid-Autumn Festival painting of the person in the photo, full moon, lanterns"
            .into(),
        negative_prompt: String::new(),
        width: 0,
        height: 0,
        received: String::new(),
    });
    c.steps = 4;
    c
}

async fn with_photo_campaign(
    backend: Backend,
    extra: &[(&'static str, &str)],
) -> (StandIn, TestApp, tempfile::TempDir) {
    let (stand_in, base) = start_standin(StandInOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let c = photo_campaign();
    std::fs::write(dir.path().join("photos.toml"), c.to_toml()).expect("write");
    let seed_dir = dir.path().display().to_string();
    let mut all = extra.to_vec();
    all.push(("HUABI__CAMPAIGNS__SEED_DIR", &seed_dir));
    let app = spawn_delivering(backend, &delivering(&base, "0"), &all).await;
    (stand_in, app, dir)
}

async fn a_photo_in_a_photo_campaign_comes_back_as_a_painting(backend: Backend) {
    let (stand_in, app, _dir) = with_photo_campaign(backend, &[]).await;
    stand_in.add_media("PHOTO-1", png(96, 64, false));
    let (status, body) = app.post_plain(&image_xml("o_photo", 8001, "PHOTO-1")).await;
    assert_eq!(status, 200);
    assert!(content(&body).contains("照片"), "{body}");
    let job = ended_job(&app, "o_photo").await;
    assert_eq!(job.status, "delivered", "{:?}", job.error);
    assert_eq!(job.photo_media_id.as_deref(), Some("PHOTO-1"));
    assert_eq!(job.strength, 0.6);
    assert_eq!(job.campaign.as_deref(), Some("photos"));
    assert!(job.prompt.contains("person in the photo"));
    let record = wait_for(&stand_in, 30, "the painting", |r| {
        r.sends
            .iter()
            .any(|s| s.touser == "o_photo" && s.msgtype == "image")
    })
    .await;
    assert_eq!(
        record.downloads,
        vec!["PHOTO-1".to_string()],
        "fetched once, by its media id"
    );
}

async fn oversize_bomb_and_unreadable_photos_are_refused_politely(backend: Backend) {
    let (stand_in, app, _dir) =
        with_photo_campaign(backend, &[("HUABI__JOBS__MAX_PHOTO_BYTES", "20000")]).await;
    stand_in.add_media("BIG", png(200, 200, true));
    stand_in.add_media("BOMB", bomb());
    stand_in.add_media("JUNK", b"<html>not a picture</html>".to_vec());
    for (n, (user, media)) in [
        ("o_big", "BIG"),
        ("o_bomb", "BOMB"),
        ("o_junk", "JUNK"),
        ("o_gone", "EXPIRED"),
    ]
    .into_iter()
    .enumerate()
    {
        app.post_plain(&image_xml(user, 8100 + n as u64, media))
            .await;
    }
    for (user, reason, words) in [
        ("o_big", "photo_too_large", "太大"),
        ("o_bomb", "photo_too_large", "太大"),
        ("o_junk", "photo_unreadable", "打不开"),
        ("o_gone", "photo_missing", "过期"),
    ] {
        let job = ended_job(&app, user).await;
        assert_eq!(job.status, "failed");
        assert_eq!(
            job.fail_reason.as_deref(),
            Some(reason),
            "{user}: {:?}",
            job.error
        );
        assert!(!job.has_image, "{user}: nothing painted");
        wait_for(&stand_in, 30, "the notice", |r| {
            r.sends
                .iter()
                .any(|s| s.touser == user && s.msgtype == "text")
        })
        .await;
        let told = texts_to(&stand_in, user);
        assert!(
            told.len() == 1 && told[0].contains(words),
            "{user}: {told:?}"
        );
    }
    assert!(
        stand_in.record().uploads.is_empty(),
        "no picture was uploaded"
    );
}

/// A copy of tiny-sd whose safety checker flags every picture.
fn strict_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("tiny-sd-strict");
    copy_dir(&root().join("models/tiny-sd"), &model);
    for part in ["safety_checker", "feature_extractor"] {
        std::fs::remove_dir_all(model.join(part)).expect("rm");
        copy_dir(
            &root().join("tests/fixtures/safety/flag-all").join(part),
            &model.join(part),
        );
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

async fn a_flagged_picture_is_not_delivered_and_the_follower_is_told(backend: Backend) {
    let (stand_in, base) = start_standin(StandInOptions::default()).await;
    let models = strict_model();
    let model_dir = models.path().join("tiny-sd-strict").display().to_string();
    let app = spawn_delivering(
        backend,
        &delivering(&base, "0"),
        &[
            ("HUABI__ENGINE__MODEL_DIR", &model_dir),
            ("HUABI__SAFETY__KEEP_FLAGGED", "true"),
        ],
    )
    .await;
    app.post_plain(&text_xml("o_flag", 9001, "a lantern on the river"))
        .await;
    let job = ended_job(&app, "o_flag").await;
    assert_eq!(job.status, "failed");
    assert_eq!(job.fail_reason.as_deref(), Some("unsafe"));
    assert!(job.has_image, "kept for review with keep_flagged");
    wait_for(&stand_in, 30, "the notice", |r| {
        r.sends
            .iter()
            .any(|s| s.touser == "o_flag" && s.msgtype == "text")
    })
    .await;
    let told = texts_to(&stand_in, "o_flag");
    assert!(told.len() == 1 && told[0].contains("安全"), "{told:?}");
    let record = stand_in.record();
    assert!(
        !record.sends.iter().any(|s| s.msgtype == "image") && record.uploads.is_empty(),
        "the picture never left"
    );
    let usage = app.store.usage("2000-01-01").await.expect("usage");
    assert_eq!(usage.iter().map(|r| r.flagged).sum::<i64>(), 1);
    // 取图 gives the same words, not the picture.
    let (_, body) = app.post_plain(&text_xml("o_flag", 9002, "取图")).await;
    assert!(!content(&body).is_empty());
}

on_both_databases!(
    a_chinese_prompt_is_painted_from_its_english,
    a_model_that_reads_chinese_gets_the_words_as_written,
    a_photo_in_a_photo_campaign_comes_back_as_a_painting,
    oversize_bomb_and_unreadable_photos_are_refused_politely,
    a_flagged_picture_is_not_delivered_and_the_follower_is_told
);
