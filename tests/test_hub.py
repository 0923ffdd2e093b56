"""model/hub.py: one place for hub access, its offline switch and its error messages."""

import pytest

from model import hub
from model.errors import UserError


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), (" YES ", True), ("on", True),
                                             ("0", False), ("", False), ("false", False), ("no", False)])
def test_offline_reads_hf_hub_offline_as_set_now(value, expected, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub.offline() is expected


def test_cache_dir_prefers_hf_hub_cache_then_hf_home(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    assert hub.cache_dir() is None
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert hub.cache_dir() == str(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub.cache_dir() == str(tmp_path / "c")


def test_offline_and_not_cached_names_the_repo_the_reason_and_what_to_pass(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))              # an empty cache
    with pytest.raises(UserError, match=r"'nobody/nothing': not available offline \(HF_HUB_OFFLINE "
                                        r"is set.*or pass a file instead"):
        hub.download("nobody/nothing", ["*.json"], instead="pass a file instead")


def test_the_call_honours_the_switch_and_the_cache(monkeypatch, tmp_path):
    import huggingface_hub
    seen = {}
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: seen.update(kw, repo_id=repo_id) or str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub.download("org/name", ["config.json"], repo_type="dataset") == tmp_path
    assert seen == {"repo_id": "org/name", "repo_type": "dataset", "allow_patterns": ["config.json"],
                    "cache_dir": str(tmp_path / "c"), "local_files_only": False}


@pytest.mark.parametrize("error, words", [("GatedRepoError", "gated"),
                                          ("RepositoryNotFoundError", "no such repo"),
                                          ("ValueError", "cannot fetch it")])
def test_each_hub_failure_is_one_user_error(error, words, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    class FakeResponse:
        status_code, headers, url, request = 404, {}, "https://example.invalid", None

    def fail(repo_id, **kw):
        if error == "ValueError":
            raise ValueError("bad id")
        raise getattr(errors, error)("refused", response=FakeResponse())

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(UserError, match=f"'org/name': .*{words}"):
        hub.download("org/name", ["*"])
