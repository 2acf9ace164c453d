"""The competition's entry point, `uvicorn main:app`: the harness's server under the name the judges run."""
from submission.main import app

__all__ = ["app"]
