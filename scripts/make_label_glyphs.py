"""Renders the visible AIGC label text "AI生成" once, as an anti-aliased coverage strip huabi scales onto every
picture (assets/ai-label.gray: u16 LE width, u16 LE height, then width*height coverage bytes, row-major).

Font: Noto Sans CJK SC Bold (SIL Open Font License 1.1), Debian package fonts-noto-cjk. Only this one rendered
string is shipped, not the font. Usage: python scripts/make_label_glyphs.py  (needs pillow)
"""
import struct

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc"
TEXT = "AI生成"
SIZE = 64

font = ImageFont.truetype(FONT, SIZE, index=0)  # index 0 = the SC face's first collection member
left, top, right, bottom = font.getbbox(TEXT)
img = Image.new("L", (right - left + 4, bottom - top + 4), 0)
ImageDraw.Draw(img).text((2 - left, 2 - top), TEXT, font=font, fill=255)
bbox = img.getbbox()
img = img.crop(bbox)
w, h = img.size
with open("assets/ai-label.gray", "wb") as f:
    f.write(struct.pack("<HH", w, h))
    f.write(img.tobytes())
img.save("/tmp/ai-label.png")
print(w, h)
