"""The local servers and the demo flows that run the stages on them: the S3 server (:mod:`.s3server`,
s3proxy over a directory), a Spark standalone cluster and an MLflow tracking server (:mod:`.cluster`),
the demo on one machine (:mod:`.demo`, ``make demo``) and on the local cluster (:mod:`.cluster_demo`,
``make cluster-demo``).

It sits at the top of the layout: it may import every stage; nothing in the stages imports it.
"""
