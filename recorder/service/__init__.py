"""The long-running service: its lifecycle (:mod:`.lifecycle`) and its operations.

Nothing is imported here: `recorder status` reads the instance lock from
:mod:`.instance` and must not pay for the whole service (websockets, the pipeline).
"""
