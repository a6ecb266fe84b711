"""The annotation workflow: prompt sets, the task queue, generating a task's candidates, rankings, review and
agreement; the annotator loop's project loader (:mod:`~annotate.workflow.access`) and the reward-score
plug-in a higher layer registers (:mod:`~annotate.workflow.scoring`)."""
