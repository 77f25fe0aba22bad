#!/usr/bin/env python3
"""Write an OCI image layout, as `skopeo copy docker://IMAGE oci:DIR:REF` leaves one.

Each --layer DIR becomes one gzip layer (in order), the image config's `config` object is
--config (JSON), and index.json names the manifest --ref. Entries are sorted and owned by
root with a fixed mtime, so the same input gives the same digests.

  oci-image.py --out DIR --ref REF --config JSON --layer DIR [--layer DIR ...]
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile

MTIME = 1_700_000_000


def layer_tar(src):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(src):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(root, name)
                info = tar.gettarinfo(path, arcname=os.path.relpath(path, src))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = MTIME
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--config", required=True, help="the image config's config object, as JSON")
    p.add_argument("--layer", action="append", required=True)
    a = p.parse_args()
    blobs = os.path.join(a.out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def blob(media_type, data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}

    layers, diff_ids = [], []
    for src in a.layer:
        tar = layer_tar(src)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        layers.append(blob("application/vnd.oci.image.layer.v1.tar+gzip", gzip.compress(tar, mtime=0)))
    config = {
        "created": "2023-11-14T22:13:20Z",
        "architecture": "amd64",
        "os": "linux",
        "config": json.loads(a.config),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "scripts/oci-image.py --layer " + os.path.basename(s)} for s in a.layer],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob("application/vnd.oci.image.config.v1+json", json.dumps(config).encode()),
        "layers": layers,
    }
    desc = blob("application/vnd.oci.image.manifest.v1+json", json.dumps(manifest).encode())
    desc["annotations"] = {"org.opencontainers.image.ref.name": a.ref}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [desc]}
    with open(os.path.join(a.out, "index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(a.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


if __name__ == "__main__":
    main()
