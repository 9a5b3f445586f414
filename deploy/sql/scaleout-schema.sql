-- scaleout: schema `scaleout` in SSISDB, written by the scaleout masters (the Raft leader ships
-- its replicated outbox here; every replica writes its own row in scaleout.replicas).
--
-- Re-runnable: every object is created only when missing. Runs on SQL Server 2017+ and on
-- iridium_server (the tests' in-process SQL Server), so it keeps to what both accept:
--   * no CREATE OR ALTER / DROP ... IF EXISTS / MERGE / NVARCHAR(MAX) / DATETIME2(n) / INCLUDE;
--     conditional creation through IF SCHEMA_ID / OBJECT_ID ... IS NULL, views through EXEC.
--   * times are DATETIME2 in whole seconds (UTC) for people, plus *_ms BIGINT columns holding the
--     exact leader-clock milliseconds since the Unix epoch for programs.
--   * worker agent ids are UUID text in NVARCHAR(36) (iridium cannot exchange
--     UNIQUEIDENTIFIER parameters).
--   * every key is a single column (iridium does not enforce composite keys).
-- Batches are separated by GO lines (sqlcmd / SSMS); `scaleout ssisdb install-schema` splits on
-- them too. Run as a login that may create a schema in SSISDB (e.g. db_owner); the master's own
-- login needs only deploy/sql/scaleout-login.sql.
--
-- Schema version 2 (version 1 plus the shipping fence: `scaleout.shipper` and `row_version` on
-- every row the leader ships). A later version adds its changes below, guarded the same way, and
-- inserts its row into scaleout.schema_version.

IF SCHEMA_ID(N'scaleout') IS NULL EXEC(N'CREATE SCHEMA scaleout')
GO

IF OBJECT_ID(N'scaleout.schema_version', N'U') IS NULL
CREATE TABLE scaleout.schema_version (
    version INT NOT NULL PRIMARY KEY,
    description NVARCHAR(256) NOT NULL,
    installed_time DATETIME2 NULL
)
GO

-- One row per master replica, written by the replica itself every few seconds (like the SSIS
-- Scale Out Master's heartbeat).
IF OBJECT_ID(N'scaleout.replicas', N'U') IS NULL
CREATE TABLE scaleout.replicas (
    replica_id BIGINT NOT NULL PRIMARY KEY,
    api_address NVARCHAR(256) NOT NULL,
    peer_address NVARCHAR(256) NOT NULL,
    role NVARCHAR(16) NOT NULL,
    term BIGINT NOT NULL,
    leader_id BIGINT NULL,
    last_online_time DATETIME2 NOT NULL,
    last_online_ms BIGINT NOT NULL
)
GO

IF OBJECT_ID(N'scaleout.worker_agents', N'U') IS NULL
CREATE TABLE scaleout.worker_agents (
    worker_agent_id NVARCHAR(36) NOT NULL PRIMARY KEY,
    display_name NVARCHAR(256) NOT NULL,
    description NVARCHAR(256) NOT NULL,
    machine_name NVARCHAR(256) NOT NULL,
    tags NVARCHAR(4000) NOT NULL,
    max_tasks INT NOT NULL,
    agent_version NVARCHAR(256) NOT NULL,
    is_enabled BIT NOT NULL,
    is_draining BIT NOT NULL,
    is_removed BIT NOT NULL,
    registered_time DATETIME2 NOT NULL,
    registered_ms BIGINT NOT NULL,
    last_online_time DATETIME2 NOT NULL,
    last_online_ms BIGINT NOT NULL
)
GO

-- One row per job (SSIS: one execution). state is the scaleout name, status the SSIS task code.
IF OBJECT_ID(N'scaleout.jobs', N'U') IS NULL
CREATE TABLE scaleout.jobs (
    job_id BIGINT NOT NULL PRIMARY KEY,
    job_name NVARCHAR(256) NOT NULL,
    package_path NVARCHAR(4000) NULL,
    command_line NVARCHAR(4000) NOT NULL,
    state NVARCHAR(16) NOT NULL,
    status INT NOT NULL,
    priority INT NOT NULL,
    max_attempts INT NOT NULL,
    attempt_count INT NOT NULL,
    cancel_requested BIT NOT NULL,
    worker_agent_id NVARCHAR(36) NULL,
    created_time DATETIME2 NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_time DATETIME2 NOT NULL,
    updated_ms BIGINT NOT NULL
)
GO

-- One task per job (task_id = job_id), shaped like SSIS's internal.tasks. Status codes:
-- 1 queued, 2 picked up, 3 running, 4 failed, 5 succeeded, 6 cancelled.
IF OBJECT_ID(N'scaleout.tasks', N'U') IS NULL
CREATE TABLE scaleout.tasks (
    task_id BIGINT NOT NULL PRIMARY KEY,
    job_id BIGINT NOT NULL,
    task_type INT NOT NULL,
    input_data NVARCHAR(4000) NOT NULL,
    max_executed_count INT NOT NULL,
    executed_count INT NOT NULL,
    status INT NOT NULL,
    is_critical BIT NOT NULL,
    priority INT NOT NULL,
    ready_for_dispatch_time DATETIME2 NOT NULL,
    ready_for_dispatch_ms BIGINT NOT NULL,
    last_updated_time DATETIME2 NOT NULL,
    last_updated_ms BIGINT NOT NULL,
    created_time DATETIME2 NOT NULL,
    created_ms BIGINT NOT NULL,
    worker_agent_id NVARCHAR(36) NULL,
    expired_time DATETIME2 NULL,
    expired_ms BIGINT NULL,
    is_cancelled BIT NOT NULL,
    last_pickup_time DATETIME2 NULL,
    last_pickup_ms BIGINT NULL
)
GO

-- One row per attempt (lease) of a task. task_attempt_id = task_id * 1000 + attempt_number.
IF OBJECT_ID(N'scaleout.task_attempts', N'U') IS NULL
CREATE TABLE scaleout.task_attempts (
    task_attempt_id BIGINT NOT NULL PRIMARY KEY,
    task_id BIGINT NOT NULL,
    attempt_number INT NOT NULL,
    worker_agent_id NVARCHAR(36) NOT NULL,
    lease_token BIGINT NOT NULL,
    started_time DATETIME2 NOT NULL,
    started_ms BIGINT NOT NULL,
    ended_time DATETIME2 NULL,
    ended_ms BIGINT NULL,
    outcome NVARCHAR(16) NULL,
    exit_code INT NULL,
    error_message NVARCHAR(4000) NULL
)
GO

-- Every outbox event exactly once (event_id = Raft log index * 2^20 + sequence). message_type
-- follows SSIS: 120 error, 110 warning, 70 information, 10 verbose/debug.
IF OBJECT_ID(N'scaleout.event_messages', N'U') IS NULL
CREATE TABLE scaleout.event_messages (
    event_id BIGINT NOT NULL PRIMARY KEY,
    event_time DATETIME2 NOT NULL,
    event_ms BIGINT NOT NULL,
    event_kind NVARCHAR(32) NOT NULL,
    message_type INT NOT NULL,
    job_id BIGINT NULL,
    attempt_number INT NULL,
    worker_agent_id NVARCHAR(36) NULL,
    log_sequence BIGINT NULL,
    message NVARCHAR(4000) NULL
)
GO

-- Event lookups by job (`WHERE job_id = ...`).
IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'ix_event_messages_job')
CREATE INDEX ix_event_messages_job ON scaleout.event_messages (job_id)
GO

-- The SSIS shapes DBAs query: catalog.worker_agents and internal.tasks, same column names and
-- codes, in schema scaleout (the master's login writes only its own schema).
IF OBJECT_ID(N'scaleout.catalog_worker_agents', N'V') IS NULL
EXEC(N'CREATE VIEW scaleout.catalog_worker_agents AS
SELECT worker_agent_id AS WorkerAgentId, is_enabled AS IsEnabled, display_name AS DisplayName,
       description AS Description, machine_name AS MachineName, tags AS Tags,
       N'''' AS UserAccount, last_online_time AS LastOnlineTime
FROM scaleout.worker_agents WHERE is_removed = 0')
GO

IF OBJECT_ID(N'scaleout.internal_tasks', N'V') IS NULL
EXEC(N'CREATE VIEW scaleout.internal_tasks AS
SELECT task_id AS TaskId, job_id AS JobId, task_type AS TaskType, input_data AS InputData,
       max_executed_count AS MaxExecutedCount, executed_count AS ExecutedCount, status AS Status,
       is_critical AS IsCritical, priority AS Priority,
       ready_for_dispatch_time AS ReadyForDispatchTime, last_updated_time AS LastUpdatedTime,
       created_time AS CreatedTime, worker_agent_id AS WorkerAgentId, expired_time AS ExpiredTime,
       is_cancelled AS IsCancelled, last_pickup_time AS LastPickupTime,
       worker_agent_id AS CandidateWorkerAgentId
FROM scaleout.tasks')
GO

IF NOT EXISTS (SELECT 1 FROM scaleout.schema_version WHERE version = 1)
INSERT INTO scaleout.schema_version (version, description, installed_time)
VALUES (1, N'scaleout schema 1: replicas, worker_agents, jobs, tasks, task_attempts, event_messages', SYSUTCDATETIME())
GO

-- Version 2: the shipping fence. Every batch the leader writes starts by claiming this one row
-- for its Raft term (UPDATE ... WHERE term <= mine, then read it back): the row lock orders the
-- transactions of two leaders, and a leader that finds a newer term rolls back. So a deposed or
-- partitioned leader, even one whose COMMIT arrives late, never writes over its successor.
IF OBJECT_ID(N'scaleout.shipper', N'U') IS NULL
CREATE TABLE scaleout.shipper (
    shipper_id INT NOT NULL PRIMARY KEY,
    term BIGINT NOT NULL,
    replica_id BIGINT NULL,
    claimed_time DATETIME2 NULL,
    claimed_ms BIGINT NULL
)
GO
IF NOT EXISTS (SELECT 1 FROM scaleout.shipper WHERE shipper_id = 1)
INSERT INTO scaleout.shipper (shipper_id, term) VALUES (1, 0)
GO

-- And every shipped row carries the newest event id of the replicated state it was read from;
-- the masters update a row only where the stored version is not newer, so no row ever shows an
-- older state than one it showed.
IF COL_LENGTH(N'scaleout.worker_agents', N'row_version') IS NULL
ALTER TABLE scaleout.worker_agents ADD row_version BIGINT NOT NULL DEFAULT 0
GO
IF COL_LENGTH(N'scaleout.jobs', N'row_version') IS NULL
ALTER TABLE scaleout.jobs ADD row_version BIGINT NOT NULL DEFAULT 0
GO
IF COL_LENGTH(N'scaleout.tasks', N'row_version') IS NULL
ALTER TABLE scaleout.tasks ADD row_version BIGINT NOT NULL DEFAULT 0
GO
IF COL_LENGTH(N'scaleout.task_attempts', N'row_version') IS NULL
ALTER TABLE scaleout.task_attempts ADD row_version BIGINT NOT NULL DEFAULT 0
GO

IF NOT EXISTS (SELECT 1 FROM scaleout.schema_version WHERE version = 2)
INSERT INTO scaleout.schema_version (version, description, installed_time)
VALUES (2, N'scaleout schema 2: the shipping fence (scaleout.shipper) and row_version on worker_agents, jobs, tasks, task_attempts', SYSUTCDATETIME())
GO

-- Version 3: job intake from T-SQL, and history in the shapes of catalog.executions and
-- catalog.operation_messages.
--
-- A SQL Agent job step or a stored procedure submits a job with
--   EXEC scaleout.submit_job @name = N'nightly load', @package = N'\\share\etl\load.dtsx',
--        @parameters = N'{"Date":"2026-12-06"}', @max_attempts = 3, @request_key = N'load-20261206';
-- which adds a row to scaleout.job_requests and returns its request_id. The leader reads pending
-- rows every ssisdb.intake_interval_ms, submits each with request_key (or "ssisdb-request-<id>")
-- as the idempotency key, so a request is one job however often it is read, and writes back
-- state 'submitted' and the job id, or 'rejected' and why. Poll scaleout.job_request_status
-- for the job's state. Arguments:
--   @name          the job's name (required);
--   @argv          the command and its arguments as a JSON array of strings,
--                  e.g. N'["cmd.exe","/c","echo hi"]'; or
--   @package       the path of an SSIS package, run through the worker's executor template;
--   @parameters    package parameters as a JSON object of strings, e.g. N'{"Date":"2026-12-06"}';
--   @max_attempts  1 to 100 (default 1); @tags: comma-separated tags a worker must all have;
--   @worker        comma-separated worker agent ids allowed to run it (default: any);
--   @request_key   the idempotency key (default: one per request row).
IF OBJECT_ID(N'scaleout.job_requests', N'U') IS NULL
CREATE TABLE scaleout.job_requests (
    request_id BIGINT IDENTITY(1,1) NOT NULL PRIMARY KEY,
    request_key NVARCHAR(128) NULL,
    job_name NVARCHAR(256) NULL,
    argv NVARCHAR(4000) NULL,
    package_path NVARCHAR(4000) NULL,
    parameters NVARCHAR(4000) NULL,
    max_attempts INT NULL,
    tags NVARCHAR(4000) NULL,
    worker_agent_ids NVARCHAR(4000) NULL,
    requested_time DATETIME2 NOT NULL DEFAULT SYSUTCDATETIME(),
    state NVARCHAR(16) NOT NULL DEFAULT N'pending',
    job_id BIGINT NULL,
    error_message NVARCHAR(4000) NULL,
    processed_time DATETIME2 NULL,
    processed_ms BIGINT NULL,
    processed_by BIGINT NULL
)
GO

IF OBJECT_ID(N'scaleout.submit_job', N'P') IS NULL
EXEC(N'CREATE PROCEDURE scaleout.submit_job
    @name NVARCHAR(256),
    @argv NVARCHAR(4000) = NULL,
    @package NVARCHAR(4000) = NULL,
    @parameters NVARCHAR(4000) = NULL,
    @max_attempts INT = NULL,
    @tags NVARCHAR(4000) = NULL,
    @worker NVARCHAR(4000) = NULL,
    @request_key NVARCHAR(128) = NULL
AS
BEGIN
    INSERT INTO scaleout.job_requests (request_key, job_name, argv, package_path, parameters,
        max_attempts, tags, worker_agent_ids)
    VALUES (@request_key, @name, @argv, @package, @parameters, @max_attempts, @tags, @worker);
    SELECT CAST(SCOPE_IDENTITY() AS BIGINT) AS request_id;
END')
GO

-- A request and the job it became: request_state pending | submitted | rejected; job_state
-- and job_status (the SSIS task code) once shipped.
IF OBJECT_ID(N'scaleout.job_request_status', N'V') IS NULL
EXEC(N'CREATE VIEW scaleout.job_request_status AS
SELECT r.request_id, r.request_key, r.job_name, r.state AS request_state, r.error_message,
       r.job_id, j.state AS job_state, j.status AS job_status, j.attempt_count,
       r.requested_time, r.processed_time, j.updated_time AS job_updated_time
FROM scaleout.job_requests AS r LEFT JOIN scaleout.jobs AS j ON j.job_id = r.job_id')
GO

-- When a job's first attempt started and when the job ended, for catalog_executions (written
-- by the shipper like the other columns).
IF COL_LENGTH(N'scaleout.jobs', N'started_time') IS NULL
ALTER TABLE scaleout.jobs ADD started_time DATETIME2 NULL
GO
IF COL_LENGTH(N'scaleout.jobs', N'ended_time') IS NULL
ALTER TABLE scaleout.jobs ADD ended_time DATETIME2 NULL
GO

-- A hash of each shipped job, task and attempt row's content (0: none yet): the shipper leaves
-- a row whose content has not changed alone instead of writing it again for every batch that
-- names it.
IF COL_LENGTH(N'scaleout.jobs', N'row_digest') IS NULL
ALTER TABLE scaleout.jobs ADD row_digest BIGINT NOT NULL DEFAULT 0
GO
IF COL_LENGTH(N'scaleout.tasks', N'row_digest') IS NULL
ALTER TABLE scaleout.tasks ADD row_digest BIGINT NOT NULL DEFAULT 0
GO
IF COL_LENGTH(N'scaleout.task_attempts', N'row_digest') IS NULL
ALTER TABLE scaleout.task_attempts ADD row_digest BIGINT NOT NULL DEFAULT 0
GO

-- catalog.executions' shape (SSIS column names; status: 1 created, 2 running, 3 canceled,
-- 4 failed, 5 pending, 6 ended unexpectedly, 7 succeeded, 8 stopping). A queued job is
-- pending (5), a picked-up or running one running (2), or stopping (8) once a cancel is asked.
IF OBJECT_ID(N'scaleout.catalog_executions', N'V') IS NULL
EXEC(N'CREATE VIEW scaleout.catalog_executions AS
SELECT j.job_id AS execution_id, N''scaleout'' AS folder_name, N''scaleout'' AS project_name,
       COALESCE(j.package_path, j.job_name) AS package_name, j.job_name AS job_name,
       CAST(200 AS INT) AS operation_type, j.created_time AS created_time,
       CAST(20 AS INT) AS object_type,
       CASE j.state WHEN N''queued'' THEN 5
                    WHEN N''picked_up'' THEN CASE WHEN j.cancel_requested = 1 THEN 8 ELSE 2 END
                    WHEN N''running'' THEN CASE WHEN j.cancel_requested = 1 THEN 8 ELSE 2 END
                    WHEN N''succeeded'' THEN 7
                    WHEN N''failed'' THEN 4
                    WHEN N''cancelled'' THEN 3
                    ELSE 1 END AS status,
       j.started_time AS start_time, j.ended_time AS end_time,
       j.worker_agent_id AS worker_agent_id, j.attempt_count AS attempt_count,
       j.max_attempts AS max_attempts
FROM scaleout.jobs AS j')
GO

-- catalog.operation_messages' shape: operation_id is the job (execution) id, message_type
-- 120 error, 110 warning, 70 information, 10 verbose; message_source_type 30 for the
-- package's own log lines, 20 (the process that runs it) for scaleout's events.
IF OBJECT_ID(N'scaleout.catalog_operation_messages', N'V') IS NULL
EXEC(N'CREATE VIEW scaleout.catalog_operation_messages AS
SELECT e.event_id AS operation_message_id, e.job_id AS operation_id, e.event_time AS message_time,
       e.message_type AS message_type,
       CASE WHEN e.event_kind = N''LogLine'' THEN 30 ELSE 20 END AS message_source_type,
       e.message AS message, e.event_kind AS event_kind, e.attempt_number AS attempt_number
FROM scaleout.event_messages AS e WHERE e.job_id IS NOT NULL')
GO

IF NOT EXISTS (SELECT 1 FROM scaleout.schema_version WHERE version = 3)
INSERT INTO scaleout.schema_version (version, description, installed_time)
VALUES (3, N'scaleout schema 3: job intake (scaleout.job_requests, scaleout.submit_job, scaleout.job_request_status) and the catalog_executions and catalog_operation_messages views', SYSUTCDATETIME())
GO
