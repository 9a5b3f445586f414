-- The scaleout masters' SQL login, least privilege: it may read and write schema `scaleout` in
-- SSISDB and nothing else (no other schema, no DDL, no server permissions). Workers get no
-- database login at all: only the masters talk to SSISDB.
--
-- For real SQL Server only (2017+; on an availability group, run it on the primary and create
-- the login with the same SID on every secondary replica). iridium_server, the tests' SQL
-- Server, has no logins, users, roles or GRANT: the tests configure its single user/password
-- instead.
--
-- Run after deploy/sql/scaleout-schema.sql, as sysadmin. Replace the password placeholder, then
-- put the same password in the file named by ssisdb.password_file (never in the config file).

USE master;
GO
IF SUSER_ID(N'scaleout_master') IS NULL
    CREATE LOGIN scaleout_master WITH PASSWORD = N'<REPLACE: a strong password>',
        DEFAULT_DATABASE = SSISDB, CHECK_POLICY = ON;
GO

USE SSISDB;
GO
IF USER_ID(N'scaleout_master') IS NULL
    CREATE USER scaleout_master FOR LOGIN scaleout_master WITH DEFAULT_SCHEMA = scaleout;
GO
IF DATABASE_PRINCIPAL_ID(N'scaleout_writer') IS NULL
    CREATE ROLE scaleout_writer;
GO
-- Read and write rows of schema scaleout only; no ALTER / CONTROL, so it cannot change the
-- schema (install-schema runs as an admin).
GRANT SELECT, INSERT, UPDATE ON SCHEMA::scaleout TO scaleout_writer;
GO
ALTER ROLE scaleout_writer ADD MEMBER scaleout_master;
GO
-- Nothing else: public's defaults only. To check: EXECUTE AS USER = N'scaleout_master';
-- SELECT * FROM fn_my_permissions(N'scaleout', N'SCHEMA'); REVERT;

-- Job intake from T-SQL (schema 3): whoever submits jobs from SQL (a SQL Agent job step's
-- login, an ETL service account) gets role scaleout_submitter: it may run scaleout.submit_job
-- and read what became of its requests and the jobs' history, and nothing else (the procedure
-- writes scaleout.job_requests through ownership chaining; no table permission is granted).
-- Add members with: ALTER ROLE scaleout_submitter ADD MEMBER [CORP\sqlagent_etl];
IF DATABASE_PRINCIPAL_ID(N'scaleout_submitter') IS NULL
    CREATE ROLE scaleout_submitter;
GO
GRANT EXECUTE ON OBJECT::scaleout.submit_job TO scaleout_submitter;
GRANT SELECT ON OBJECT::scaleout.job_request_status TO scaleout_submitter;
GRANT SELECT ON OBJECT::scaleout.catalog_executions TO scaleout_submitter;
GRANT SELECT ON OBJECT::scaleout.catalog_operation_messages TO scaleout_submitter;
GO
