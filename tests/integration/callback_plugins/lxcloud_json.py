# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stdout callback for the integration tests: one JSON document at the end, shaped like
ansible.posix.json ({"plays": [{"play", "tasks": [{"task", "hosts": {HOST: result}}]}],
"stats"}), without needing the ansible.posix collection."""

from __future__ import annotations

import json

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: lxcloud_json
type: stdout
short_description: JSON document of all results (test helper)
description: Prints every play, task and host result as one JSON document at the end.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "lxcloud_json"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plays: list[dict] = []

    def _task(self, task):
        tasks = self.plays[-1]["tasks"] if self.plays else []
        if not tasks or tasks[-1]["task"]["id"] != str(task._uuid):
            tasks.append({"task": {"name": task.get_name(), "id": str(task._uuid)}, "hosts": {}})
        return tasks[-1]

    def v2_playbook_on_play_start(self, play):
        self.plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._task(task)

    def _record(self, result, **extra):
        if not self.plays:
            self.plays.append({"play": {"name": "adhoc"}, "tasks": []})
        entry = self._task(result._task)
        data = dict(result._result)
        data.update(extra)
        entry["hosts"][result._host.get_name()] = data

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, failed=True)

    def v2_runner_on_unreachable(self, result):
        self._record(result, unreachable=True)

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)

    def v2_playbook_on_stats(self, stats):
        summary = {h: stats.summarize(h) for h in sorted(stats.processed)}
        self._display.display(json.dumps({"plays": self.plays, "stats": summary},
                                         default=str, sort_keys=True))
