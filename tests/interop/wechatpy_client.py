"""An independent WeChat client (wechatpy, not huabi's code) driving huabi's webhook.

Usage: wechatpy_client.py URL TOKEN ENCODING_AES_KEY APPID
Encrypts a message as WeChat's servers do, posts it with its signatures, then verifies the signature of
huabi's encrypted reply and decrypts it. Prints one JSON line; exits non-zero on any mismatch.
"""
import hashlib
import json
import random
import sys
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

from wechatpy.crypto import WeChatCrypto
from wechatpy.utils import check_signature


def post(url, query, body):
    full = url + "?" + urllib.parse.urlencode(query)
    req = urllib.request.Request(full, data=body.encode("utf-8"), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read().decode("utf-8")


def main():
    url, token, key, appid = sys.argv[1:5]
    crypto = WeChatCrypto(token, key, appid)
    now = str(int(time.time()))
    nonce = str(random.randint(10**8, 10**9))

    # URL verification with a signature computed by wechatpy's signer.
    signature = hashlib.sha1("".join(sorted([token, now, nonce])).encode()).hexdigest()
    check_signature(token, signature, now, nonce)  # raises if our own computation were wrong
    query = {"signature": signature, "timestamp": now, "nonce": nonce, "echostr": "wechatpy-echo-42"}
    with urllib.request.urlopen(url + "?" + urllib.parse.urlencode(query), timeout=10) as resp:
        echoed = resp.read().decode()
    assert echoed == "wechatpy-echo-42", echoed

    msg_id = str(random.randint(10**15, 10**16))
    content = "嫦娥抱玉兔 ]]> & <b>"
    message = (
        "<xml><ToUserName><![CDATA[gh_interop]]></ToUserName>"
        "<FromUserName><![CDATA[o_wechatpy]]></FromUserName>"
        f"<CreateTime>{now}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content>{content.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')}</Content>"
        f"<MsgId>{msg_id}</MsgId></xml>"
    )
    envelope = ET.fromstring(crypto.encrypt_message(message, nonce, now))
    encrypt = envelope.findtext("Encrypt")
    msg_signature = envelope.findtext("MsgSignature")
    body = f"<xml><ToUserName><![CDATA[gh_interop]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    query = {
        "signature": signature,
        "timestamp": now,
        "nonce": nonce,
        "openid": "o_wechatpy",
        "encrypt_type": "aes",
        "msg_signature": msg_signature,
    }
    replies = []
    for _ in range(2):  # WeChat's retry must get the same answer
        status, reply = post(url, query, body)
        assert status == 200, (status, reply)
        reply_env = ET.fromstring(reply)
        plain = crypto.decrypt_message(
            reply,
            reply_env.findtext("MsgSignature"),
            reply_env.findtext("TimeStamp"),
            reply_env.findtext("Nonce"),
        )
        inner = ET.fromstring(plain)
        assert inner.findtext("ToUserName") == "o_wechatpy", plain
        assert inner.findtext("FromUserName") == "gh_interop", plain
        assert inner.findtext("MsgType") == "text", plain
        replies.append(inner.findtext("Content"))
    assert replies[0] == replies[1], replies
    print(json.dumps({"ok": True, "msg_id": msg_id, "reply": replies[0], "prompt": content}, ensure_ascii=False))


if __name__ == "__main__":
    main()
