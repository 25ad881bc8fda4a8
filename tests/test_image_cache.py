"""The image cache keeps what the suites boot and nothing more."""

from __future__ import annotations

from pathlib import Path

from pvfront.image import _prune


def make_image(target_dir: Path, release: str, key: str) -> Path:
    directory = target_dir / release
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{key}.json").write_text("{}")
    raw = directory / f"{key}.raw"
    raw.write_bytes(b"disk")
    return raw


def test_a_new_image_replaces_the_older_images_of_its_release(tmp_path):
    old = make_image(tmp_path, "4.2.10+pv-generic", "aaaa")
    unversioned = make_image(tmp_path, ".", "cccc")  # the layout before images had releases
    new = make_image(tmp_path, "4.2.10+pv-generic", "bbbb")
    _prune(new.parent, "bbbb")
    assert new.exists() and not old.exists() and not old.with_suffix(".json").exists()
    assert not unversioned.exists()


def test_the_two_newest_releases_are_kept_by_version_not_by_age(tmp_path):
    # The upgrade test made 4.2.9's image after 4.2.10's; then 4.2.11 appears.
    previous = make_image(tmp_path, "4.2.10+pv-generic", "aaaa")
    older = make_image(tmp_path, "4.2.9+pv-generic", "bbbb")
    point = make_image(tmp_path, "4.2.7+pv.1-generic", "cccc")
    newest = make_image(tmp_path, "4.2.11+pv-generic", "dddd")
    _prune(newest.parent, "dddd")
    assert newest.exists() and previous.exists()
    assert not older.parent.exists() and not point.parent.exists()


def test_the_image_just_made_stays_even_for_an_older_kernel(tmp_path):
    for release, key in (("4.2.11+pv-generic", "aaaa"), ("4.2.10+pv-generic", "bbbb")):
        make_image(tmp_path, release, key)
    oldest = make_image(tmp_path, "4.2.9+pv-generic", "cccc")
    _prune(oldest.parent, "cccc")
    assert oldest.exists()
