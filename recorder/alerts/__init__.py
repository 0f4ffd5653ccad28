"""Alerts: rules over what the recorder sees (frames as they are classified, and the
service's own state on a timer), the alerts they raise, and how a notification says
one, all pure; and the I/O edge that sends the alerts the outbox holds.

- :mod:`~recorder.alerts.spec`: rules and targets as data, ``mask_url``;
- :mod:`~recorder.alerts.rules`: :class:`Rules`, the entry point;
- :mod:`~recorder.alerts.frames` and :mod:`~recorder.alerts.conditions`: the matching;
- :mod:`~recorder.alerts.occurrence`: what a rule raises, and its repeat memory;
- :mod:`~recorder.alerts.notify`: the notification's one line;
- :mod:`~recorder.alerts.delivery`: the service's :class:`Deliverer` (the outbox's
  storage is :mod:`recorder.db.alerts`), and :mod:`~recorder.alerts.send`, one send.
"""
