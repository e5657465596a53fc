"""The engines behind one small module each, so nothing else imports them: Spark sessions
(:mod:`.spark`), Delta tables (:mod:`.delta_io`), Petastorm readers (:mod:`.petastorm_io`), Horovod
(:mod:`.hvd`) and MLflow (:mod:`.tracking`; the scoring its logged model runs: :mod:`.serving`)."""
