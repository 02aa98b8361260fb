"""One engine per Spark executor and device, fed by every task of the executor.

``share="executor"`` (see :func:`torchspark.predict`): the first task on an
executor starts an engine process for the model, device and input layout
(:mod:`.rendezvous`); every task hands it Arrow batches through shared memory
(:mod:`.segment`) over a Unix socket (:mod:`.protocol`) with a
:class:`.client.SharedEngine`; the process (:mod:`.server`) loads the model
once and batches rows across tasks. :mod:`.mode` chooses between that and
one engine per task.
"""
