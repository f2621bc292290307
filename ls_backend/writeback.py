"""Predictions written back to Label Studio through ``label-studio-sdk``.

The backend's pre-annotation job (:mod:`.jobs`) and ``promptmoe annotate`` write the
predictions of tasks that did not fit in a batch request with :class:`LabelStudioWriter`.
Writing is idempotent per (task, model version): a task that already holds a prediction of
the version is left alone, so a resumed job never writes a task twice.
"""

from __future__ import annotations

import logging
from functools import partial
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds one Label Studio API call may take.
API_TIMEOUT = 30.0
#: Tasks fetched per page by :meth:`LabelStudioWriter.project_tasks`.
PAGE_SIZE = 100


class LabelStudioError(RuntimeError):
    """Label Studio refused or could not be reached; the message is one line.

    ``status`` is the HTTP status Label Studio answered (401/403 token refused, 404 not
    found, ...), None when it could not be reached at all (worth retrying later)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status

    @property
    def unreachable(self) -> bool:
        """Whether Label Studio did not answer (or answered 5xx): the call may work later."""
        return self.status is None or self.status >= 500


def _detail(body: Any) -> str:
    """A short one-line text of an API error body."""
    if isinstance(body, dict):
        body = body.get("detail") or body.get("message") or body
    return " ".join(str(body).split())[:200]


class LabelStudioWriter:
    """Reads tasks and writes predictions of one Label Studio (``url``, ``api_key``: a
    legacy token or a personal access token, which the SDK exchanges itself)."""

    def __init__(self, url: str, api_key: str, timeout: float = API_TIMEOUT):
        if not url or not api_key:
            raise LabelStudioError(
                "writing predictions back needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"
            )
        self.url = url.rstrip("/")
        try:
            self.client = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)
        except ApiError as exc:  # an expired or malformed personal access token
            raise LabelStudioError(
                f"Label Studio token refused: {_detail(exc.body)} (LABEL_STUDIO_API_KEY)",
                exc.status_code,
            ) from exc

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, its failures as :class:`LabelStudioError` naming ``what``."""
        try:
            return call()
        except ApiError as exc:
            status = exc.status_code
            if status in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the token (HTTP {status}) for {what}: "
                    "check LABEL_STUDIO_API_KEY",
                    status,
                ) from exc
            if status == 404:
                raise LabelStudioError(f"{what}: not found at {self.url}", 404) from exc
            raise LabelStudioError(
                f"Label Studio at {self.url} answered HTTP {status} for {what}: "
                f"{_detail(exc.body)}",
                status,
            ) from exc
        except httpx.HTTPError as exc:
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} for {what} ({type(exc).__name__}: {exc})"
            ) from exc

    def versions(self, task_id: int) -> list[str]:
        """The ``model_version`` of every prediction task ``task_id`` holds."""
        preds = self._call(
            f"the predictions of task {task_id}",
            lambda: self.client.predictions.list(task=int(task_id)),
        )
        return [str(p.model_version or "") for p in preds]

    def write(self, task_id: int, prediction: dict) -> None:
        """Create ``prediction`` (``result``, ``score``, ``model_version``) on the task,
        unless the task already holds a prediction of that model version."""
        version = prediction["model_version"]
        if version in self.versions(task_id):
            log.info("task %s already has a %s prediction: not written again", task_id, version)
            return
        self._call(
            f"writing a prediction to task {task_id}",
            lambda: self.client.predictions.create(
                task=int(task_id),
                result=prediction["result"],
                score=float(prediction.get("score", 0.0)),
                model_version=version,
            ),
        )

    def label_config(self, project_id: int) -> str:
        """The labeling config XML of the project."""
        project = self._call(f"project {project_id}", lambda: self.client.projects.get(project_id))
        return str(project.label_config or "")

    def project_tasks(self, project_id: int) -> Iterator[dict]:
        """Every task of the project with its annotations and predictions (as Label
        Studio's task JSON), fetched :data:`PAGE_SIZE` at a time."""
        self.label_config(project_id)  # a missing project is an error, not zero tasks
        page = 1
        while True:
            try:
                pager = self._call(
                    f"tasks of project {project_id} (page {page})",
                    partial(
                        self.client.tasks.list,
                        project=project_id,
                        page=page,
                        page_size=PAGE_SIZE,
                        fields="all",
                    ),
                )
            except LabelStudioError as exc:
                if exc.status == 404 and page > 1:  # Label Studio's answer past the last page
                    return
                raise
            items = list(pager.items or [])
            yield from (t.model_dump(mode="json") for t in items)
            if len(items) < PAGE_SIZE or not pager.has_next:
                return
            page += 1
